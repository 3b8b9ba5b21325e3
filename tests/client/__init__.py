"""The facade and the engine client: parents, scopes, streams, the sync facade, the queue, lifecycle, crashes."""
