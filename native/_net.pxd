# C surface of _net.pyx: one frame's link/network/transport headers, decoded without Python objects.
from libc.stdint cimport uint8_t, uint16_t, uint32_t

cdef enum:
    NET_NON_IP = -1
    NET_OTHER_L4 = -2

cdef struct Pkt:
    int l4                 # 6 or 17
    uint8_t src[16]        # IPv4 mapped into ::ffff:0:0/96
    uint8_t dst[16]
    uint16_t sport
    uint16_t dport
    uint8_t flags
    uint32_t seq
    Py_ssize_t off         # payload offset in the frame
    Py_ssize_t n           # payload length

# Returns 0 for TCP/UDP (``out`` filled), NET_NON_IP, NET_OTHER_L4, or -(100 + error kind index).
cdef int decode_c(int linktype, const uint8_t* f, Py_ssize_t n, Pkt* out) noexcept nogil
