"""
Headends: the HTTP faces of the server.
"""
