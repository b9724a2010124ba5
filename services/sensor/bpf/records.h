/* Records shared by the kernel programs (sensor.bpf.c, tls.bpf.c) and user space (costmesh.sensor.bpf reads the
 * same layouts through ctypes mirrors declared next to the loader; a test checks their sizes against this file).
 *
 * Every field has a fixed width and explicit padding, so the layout is the same for clang (BPF) and for ctypes.
 */
#ifndef COSTMESH_RECORDS_H
#define COSTMESH_RECORDS_H

/* One direction of one flow, as seen on the wire. IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d).
 * gen is the counting generation (0/1): user space flips it every poll period and reads the previous one only
 * after a full period has passed, so no update races with the read-and-delete. */
struct flow_key {
    __u8 saddr[16];
    __u8 daddr[16];
    __u16 sport;
    __u16 dport;
    __u8 proto;       /* IPPROTO_TCP or IPPROTO_UDP */
    __u8 gen;
    __u16 ifindex;
};

struct flow_val {
    __u64 bytes;      /* network-layer bytes: IP header and everything after it */
    __u64 packets;
};

/* One flow's two directions for the AI full-payload map: the key of either direction is inserted. */
struct ai_flow_key {
    __u8 saddr[16];
    __u8 daddr[16];
    __u16 sport;
    __u16 dport;
    __u32 pad;
};

/* Counters kept in the kernel, one slot each in the 'stats' array. */
#define STAT_SEEN_PACKETS      0  /* every packet the filter ran on (after the loopback duplicate check) */
#define STAT_PASSED_PACKETS    1  /* handed to user space (before the ring: ring drops are counted by the socket) */
#define STAT_FLOW_FULL_PACKETS 2  /* could not get a flow slot: counted here instead, bytes in the next slot */
#define STAT_FLOW_FULL_BYTES   3
#define STAT_TLS_LOST          4  /* TLS events the ring buffer had no room for */
#define STAT_TLS_EVENTS        5
#define STAT_READS_LOST        6  /* server reads the ring buffer had no room for (reads.bpf.c) */
#define STAT_COUNT             7

/* One SSL_read/SSL_write call's plaintext (or one chunk of it when longer than TLS_CHUNK). */
#define TLS_CHUNK 4096  /* bytes of plaintext one event carries (a power of two) */
#define TLS_DIR_WRITE 0
#define TLS_DIR_READ  1
struct tls_event {
    __u64 ts_ns;      /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    __u64 ssl;        /* the SSL* pointer: one TLS connection within the process */
    __u64 cgroup_id;
    __u32 pid;        /* process (tgid) */
    __u32 tid;
    __u32 len;        /* bytes of the whole call */
    __u32 offset;     /* where this chunk starts within the call */
    __u32 captured;   /* bytes of data[] that are valid */
    __u8 direction;   /* TLS_DIR_* */
    __u8 pad[3];
    char comm[16];
    __u8 data[TLS_CHUNK];
};

/* A process started a new program (sched_process_exec): user space looks for its OpenSSL at once. */
struct exec_event {
    __u32 pid;        /* process (tgid) */
    char comm[16];    /* the new program's name */
};

/* A server on this host read bytes of one of its connections (reads.bpf.c). Addresses as in flow_key. */
struct read_event {
    __u64 ts_ns;      /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    __u8 local[16];   /* the server's end */
    __u8 peer[16];
    __u16 local_port;
    __u16 peer_port;
    __u32 pad;
};

#endif
