NON_IP: int
OTHER_L4: int

def decode(linktype: int, f: bytes) -> tuple[int, bytes, bytes, int, int, int, int, bytes] | int: ...
