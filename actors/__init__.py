"""Pipeline parts: CDC reader, embedders, writer, and the vector sinks they feed.

Every part is a plain class that tests drive without Ray; the Ray actors in
``actors.remote`` are thin wrappers around them.
"""
