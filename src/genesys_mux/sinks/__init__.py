"""Where events go after a stream: the dead-letter queue now, downstream services later."""
