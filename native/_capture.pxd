# C surface of _capture.pyx: the engine pulls frames without a Python object per frame.
from libc.stdint cimport int64_t, uint8_t

cdef struct Frame:
    int64_t ts_us
    int linktype
    const uint8_t* data     # points into the reader's buffer; valid until the next call
    Py_ssize_t n

cdef class CaptureReader:
    cdef readonly str path
    cdef object _fh
    cdef bint _own
    cdef Py_ssize_t _chunk
    cdef bytearray _buf         # the read buffer: bytes [_pos, _len) are unread; reused, grown only for big records
    cdef char* _p
    cdef Py_ssize_t _len
    cdef object _readinto
    cdef Py_ssize_t _pos
    cdef bint _eof
    cdef readonly long long frames
    cdef readonly str format
    cdef readonly long long offset
    cdef int _state            # 0 start, 1 pcap, 2 pcapng, 3 done
    cdef bint _big             # byte order of the current file/section
    cdef int _div              # pcap: 1 (µs) or 1000 (ns)
    cdef int _linktype         # pcap
    cdef list _ifaces          # pcapng: (linktype, snaplen, tsresol)
    cdef int64_t _last_ts
    cdef Py_ssize_t _pending   # bytes of the frame handed out last, added to offset on the next call

    cdef bint _need(self, Py_ssize_t n) except -1
    cdef int next_c(self, Frame* out) except -1
