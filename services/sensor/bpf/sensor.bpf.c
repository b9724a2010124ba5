/* Socket filter of the live sensor, attached to one packet socket per watched interface.
 *
 * For every IPv4/IPv6 TCP or UDP packet it (1) adds the packet's network-layer bytes to the per-flow, per-direction
 * counters of the active generation (flows0/flows1), whether or not the packet goes on to user space, and (2) decides
 * what user space gets: nothing, the headers plus SNAPLEN payload bytes, or the whole packet for AI flows.
 *
 * Passed to user space: segments of watched ports (watched_ports, filled from config), segments whose payload starts
 * like HTTP/1.x, a PostgreSQL startup/SSL request or message, a TLS ClientHello, and DNS over UDP. Empty TCP segments
 * (pure ACKs) never leave the kernel. On the loopback interface each packet is seen twice (outgoing, then incoming):
 * only the incoming copy is used.
 *
 * Placeholders (UPPER_SNAKE, replaced by costmesh.sensor.bpf.program_text): MAX_FLOWS, SNAPLEN, LOOPBACK_IFINDEX.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/if_packet.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "records.h"

#define PORT_WATCH 1
#define PORT_AI 2
#define N16(x) __builtin_bswap16(x)

BPF_HASH(flows0, struct flow_key, struct flow_val, MAX_FLOWS);
BPF_HASH(flows1, struct flow_key, struct flow_val, MAX_FLOWS);
BPF_ARRAY(generation, u32, 1);
BPF_HASH(watched_ports, u16, u8, 4096);
BPF_HASH(ai_flows, struct ai_flow_key, u8, 16384);
BPF_PERCPU_ARRAY(stats, u64, STAT_COUNT);

static __always_inline void stat_add(u32 idx, u64 n) {
    u64 *v = stats.lookup(&idx);
    if (v)
        *v += n;
}

static __always_inline struct flow_val *flow_slot0(struct flow_key *key) {
    struct flow_val *v = flows0.lookup(key);
    if (!v) {
        struct flow_val zero = {};
        flows0.insert(key, &zero);
        v = flows0.lookup(key);
    }
    return v;
}

static __always_inline struct flow_val *flow_slot1(struct flow_key *key) {
    struct flow_val *v = flows1.lookup(key);
    if (!v) {
        struct flow_val zero = {};
        flows1.insert(key, &zero);
        v = flows1.lookup(key);
    }
    return v;
}

static __always_inline void count_flow(struct flow_key *key, u32 bytes) {
    u32 zero = 0;
    u32 *gen = generation.lookup(&zero);
    struct flow_val *v;
    key->gen = gen ? (*gen & 1) : 0;
    v = key->gen ? flow_slot1(key) : flow_slot0(key);
    if (v) {
        __sync_fetch_and_add(&v->bytes, bytes);
        __sync_fetch_and_add(&v->packets, 1);
    } else {
        stat_add(STAT_FLOW_FULL_PACKETS, 1);
        stat_add(STAT_FLOW_FULL_BYTES, bytes);
    }
}

/* The first bytes of a payload look like something the parsers read. */
static __always_inline int worth_parsing(const u8 *p, u32 n) {
    if (n >= 4) {
        /* HTTP/1.x requests and responses */
        if ((p[0] == 'G' && p[1] == 'E' && p[2] == 'T' && p[3] == ' ') ||
            (p[0] == 'P' && p[1] == 'O' && p[2] == 'S' && p[3] == 'T') ||
            (p[0] == 'P' && p[1] == 'U' && p[2] == 'T' && p[3] == ' ') ||
            (p[0] == 'D' && p[1] == 'E' && p[2] == 'L' && p[3] == 'E') ||
            (p[0] == 'P' && p[1] == 'A' && p[2] == 'T' && p[3] == 'C') ||
            (p[0] == 'H' && p[1] == 'E' && p[2] == 'A' && p[3] == 'D') ||
            (p[0] == 'O' && p[1] == 'P' && p[2] == 'T' && p[3] == 'I') ||
            (p[0] == 'H' && p[1] == 'T' && p[2] == 'T' && p[3] == 'P'))
            return 1;
    }
    if (n >= 6 && p[0] == 0x16 && p[1] == 0x03 && p[2] <= 0x04 && p[5] == 0x01)
        return 1; /* TLS handshake record carrying a ClientHello: the SNI names the destination */
    if (n >= 8) {
        u32 len = ((u32)p[0] << 24) | ((u32)p[1] << 16) | ((u32)p[2] << 8) | p[3];
        /* PostgreSQL StartupMessage (protocol 3.0), SSLRequest, GSSENCRequest, CancelRequest */
        if (len >= 8 && len <= 10000 &&
            ((p[4] == 0x00 && p[5] == 0x03 && p[6] == 0x00 && p[7] == 0x00) ||
             (p[4] == 0x04 && p[5] == 0xd2 && p[6] == 0x16 && (p[7] == 0x2f || p[7] == 0x30 || p[7] == 0x2e))))
            return 1;
        /* PostgreSQL regular message: a known type byte and a plausible length (< 16 MiB) */
        u8 t = p[0];
        if ((t == 'Q' || t == 'P' || t == 'B' || t == 'E' || t == 'D' || t == 'C' || t == 'T' || t == 'Z' ||
             t == 'R' || t == '1' || t == '2') && p[1] == 0 && ((u32)p[2] << 16 | (u32)p[3] << 8 | p[4]) >= 4)
            return 1;
    }
    return 0;
}

int costmesh_filter(struct __sk_buff *skb) {
    if (skb->pkt_type == PACKET_OUTGOING && skb->ifindex == LOOPBACK_IFINDEX)
        return 0;

    struct ethhdr eth;
    if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
        return 0;
    u32 off = ETH_HLEN;
    u16 proto = N16(eth.h_proto);
    if (proto == ETH_P_8021Q || proto == ETH_P_8021AD) {
        u16 tag[2];
        if (bpf_skb_load_bytes(skb, off, tag, sizeof(tag)) < 0)
            return 0;
        proto = N16(tag[1]);
        off += 4;
    }

    struct flow_key key = {};
    u32 net_off = off, ip_end, l4_off;
    u8 l4;
    if (proto == ETH_P_IP) {
        struct iphdr ip;
        if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
            return 0;
        u32 ihl = ip.ihl * 4;
        if (ihl < sizeof(ip))
            return 0;
        l4 = ip.protocol;
        key.saddr[10] = key.saddr[11] = key.daddr[10] = key.daddr[11] = 0xff;
        __builtin_memcpy(&key.saddr[12], &ip.saddr, 4);
        __builtin_memcpy(&key.daddr[12], &ip.daddr, 4);
        u32 tot = N16(ip.tot_len);
        ip_end = tot ? net_off + tot : skb->len;
        l4_off = off + ihl;
        if (ip.frag_off & N16(0x1fff))
            l4 = 0; /* a later fragment has no ports: not a flow we can name */
    } else if (proto == ETH_P_IPV6) {
        struct ipv6hdr ip6;
        if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
            return 0;
        l4 = ip6.nexthdr;
        __builtin_memcpy(key.saddr, &ip6.saddr, 16);
        __builtin_memcpy(key.daddr, &ip6.daddr, 16);
        u32 plen = N16(ip6.payload_len);
        ip_end = plen ? net_off + sizeof(ip6) + plen : skb->len;
        l4_off = off + sizeof(ip6);
    } else {
        return 0;
    }
    if (ip_end > skb->len)
        ip_end = skb->len;
    stat_add(STAT_SEEN_PACKETS, 1);

    u32 payload_off;
    if (l4 == IPPROTO_TCP) {
        struct tcphdr tcp;
        if (bpf_skb_load_bytes(skb, l4_off, &tcp, sizeof(tcp)) < 0)
            return 0;
        key.sport = N16(tcp.source);
        key.dport = N16(tcp.dest);
        payload_off = l4_off + tcp.doff * 4;
    } else if (l4 == IPPROTO_UDP) {
        struct udphdr udp;
        if (bpf_skb_load_bytes(skb, l4_off, &udp, sizeof(udp)) < 0)
            return 0;
        key.sport = N16(udp.source);
        key.dport = N16(udp.dest);
        payload_off = l4_off + sizeof(udp);
    } else {
        return 0;
    }
    key.proto = l4;
    key.ifindex = skb->ifindex;
    count_flow(&key, ip_end - net_off);

    if (payload_off >= ip_end)
        return 0; /* no payload: ACKs, SYN/FIN without data */
    u32 payload_len = ip_end - payload_off;

    int pass = 0, full = 0;
    u8 *kind = watched_ports.lookup(&key.dport);
    if (!kind)
        kind = watched_ports.lookup(&key.sport);
    if (kind) {
        pass = 1;
        full = *kind & PORT_AI;
    }
    if (!full) {
        struct ai_flow_key ak = {};
        __builtin_memcpy(ak.saddr, key.saddr, 16);
        __builtin_memcpy(ak.daddr, key.daddr, 16);
        ak.sport = key.sport;
        ak.dport = key.dport;
        if (ai_flows.lookup(&ak))
            pass = full = 1;
    }
    if (!pass && l4 == IPPROTO_UDP && (key.sport == 53 || key.dport == 53))
        pass = 1;
    if (!pass && l4 == IPPROTO_TCP && payload_len >= 4) {
        u8 head[8] = {};
        u32 n = payload_len < 8 ? payload_len : 8;
        if (n == 8) {
            if (bpf_skb_load_bytes(skb, payload_off, head, 8) < 0)
                return 0;
        } else if (bpf_skb_load_bytes(skb, payload_off, head, 4) < 0) {
            return 0;
        }
        pass = worth_parsing(head, n);
    }
    if (!pass)
        return 0;
    stat_add(STAT_PASSED_PACKETS, 1);
    if (full)
        return skb->len;
    u32 cut = payload_off + SNAPLEN;
    return cut < skb->len ? cut : skb->len;
}
