"""The sans-I/O core: plain classes with no asyncio, no sockets and no clock reads.

Frames and times go in as values; actions and events come out. Everything
here is tested without a network.
"""
