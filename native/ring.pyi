def feed_blocks(
    ring: object,
    block_size: int,
    block_count: int,
    current: int,
    engine: object | None,
    out: list[tuple[int, bytes]] | None,
    hellos: list[bytes] | None,
    seen: object | None,
    max_blocks: int = 0,
) -> tuple[int, int, int]: ...
