"""Object store clients, one per service, and the asyncio seam they are reached through."""
