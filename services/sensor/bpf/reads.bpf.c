/* Reads by servers on this host: when a process listening on a watched server port (server_ports, filled from
 * sensor.http_ports and sensor.postgres_ports) takes bytes out of one of its connections.
 *
 * Why: the socket filter sees a request when it arrives, but the server starts on it only when it reads it; on a busy
 * CPU the request waits in the socket for the server's turn (the run-queue wait), which is not work the server did
 * for the caller. User space gives these reads to the engine (Engine.server_reads), which starts a request's server
 * time at the first read between its arrival and its answer.
 *
 * The tcp:tcp_rcv_space_adjust tracepoint fires once per recvmsg that copied bytes (never for an empty read), in the
 * reader's context; its sport is the socket's own port (host order), its addresses IPv4-mapped for IPv4 sockets,
 * as the flow table stores them. A full ring buffer drops the event and counts it (stats[STAT_READS_LOST]): the
 * request's server time then starts at its arrival, as without this program.
 *
 * Placeholders: READS_RING_PAGES.
 */
#include "records.h"

BPF_HASH(server_ports, u16, u8, 4096);
BPF_RINGBUF_OUTPUT(reads, READS_RING_PAGES);
BPF_PERCPU_ARRAY(stats, u64, STAT_COUNT);

TRACEPOINT_PROBE(tcp, tcp_rcv_space_adjust) {
    u16 port = args->sport;
    if (!server_ports.lookup(&port))
        return 0;
    struct read_event *ev = reads.ringbuf_reserve(sizeof(struct read_event));
    if (!ev) {
        u32 idx = STAT_READS_LOST;
        u64 *v = stats.lookup(&idx);
        if (v)
            *v += 1;
        return 0;
    }
    ev->ts_ns = bpf_ktime_get_ns();
    __builtin_memcpy(ev->local, args->saddr_v6, 16);
    __builtin_memcpy(ev->peer, args->daddr_v6, 16);
    ev->local_port = args->sport;
    ev->peer_port = args->dport;
    ev->pad = 0;
    /* no wake-up: user space takes the reads before every ring read */
    reads.ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
    return 0;
}
