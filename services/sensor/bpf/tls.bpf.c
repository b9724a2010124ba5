/* Uprobes on OpenSSL's SSL_write/SSL_read and SSL_write_ex/SSL_read_ex: the plaintext of TLS connections made or
 * served by processes on this host, with the pid that made the call and its cgroup.
 *
 * Each call's arguments are kept at entry (per thread) and the plaintext is copied at return, when the number of
 * bytes really written or read is known. A call longer than TLS_CHUNK bytes goes out as several events (offset tells
 * where each starts), up to TLS_MAX_CHUNKS chunks; the event's len always says the whole size, so user space knows
 * when it was cut. When the ring buffer is full the event is counted in stats[STAT_TLS_LOST] and the program goes on:
 * the traced process is never slowed by a slow reader.
 *
 * Process starts (the sched_process_exec tracepoint) go to their own small ring buffer, so that user space probes a
 * program started after the sensor at once rather than at its next /proc scan.
 *
 * TLS_CHUNK is fixed in records.h. Placeholders: TLS_MAX_CHUNKS, TLS_WAKEUP_EVERY, TLS_RING_PAGES, FILTER_PID (0: every process).
 */
#include <uapi/linux/ptrace.h>

#include "records.h"

struct ssl_call {
    u64 ssl;
    u64 buf;
    u64 done_ptr; /* size_t *written / *readbytes of the _ex variants, 0 for the plain ones */
};

BPF_HASH(write_calls, u64, struct ssl_call, 16384);
BPF_HASH(read_calls, u64, struct ssl_call, 16384);
BPF_RINGBUF_OUTPUT(tls_events, TLS_RING_PAGES);
BPF_PERCPU_ARRAY(scratch, struct tls_event, 1);
BPF_PERCPU_ARRAY(stats, u64, STAT_COUNT);
BPF_PERCPU_ARRAY(unannounced, u64, 1); /* events written since the last wake-up of the reader, per CPU */
BPF_RINGBUF_OUTPUT(exec_events, 8);

static __always_inline void stat_add(u32 idx, u64 n) {
    u64 *v = stats.lookup(&idx);
    if (v)
        *v += n;
}

static __always_inline int wanted(u64 pid_tgid) {
    u32 pid = pid_tgid >> 32;
    return FILTER_PID == 0 || pid == FILTER_PID;
}


static __always_inline int emit(struct pt_regs *ctx, struct ssl_call *call, u32 len, u8 direction) {
    u32 zero = 0;
    struct tls_event *ev = scratch.lookup(&zero);
    if (!ev)
        return 0;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    ev->ts_ns = bpf_ktime_get_ns();
    ev->ssl = call->ssl;
    ev->cgroup_id = bpf_get_current_cgroup_id();
    ev->pid = pid_tgid >> 32;
    ev->tid = (u32)pid_tgid;
    ev->len = len;
    ev->direction = direction;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    for (u32 i = 0; i < TLS_MAX_CHUNKS; i++) {
        u32 off = i * TLS_CHUNK;
        if (off >= len)
            break;
        u64 n = len - off;
        if (n > TLS_CHUNK)
            n = TLS_CHUNK;
        /* Opaque to the compiler, so the bound survives for the verifier (it would drop a plain mask). */
        asm volatile("%0 &= 0x1fff" : "+r"(n));
        if (n > TLS_CHUNK)
            n = TLS_CHUNK;
        ev->offset = off;
        ev->captured = n;
        if (bpf_probe_read_user(ev->data, n, (void *)(call->buf + off)) < 0) {
            ev->captured = 0;
            n = 0;
        }
        stat_add(STAT_TLS_EVENTS, 1);
        /* Wake the reader once per TLS_WAKEUP_EVERY events (it also reads at every window's end): one wake-up per
         * event would cost more than the event. */
        u64 flags = BPF_RB_NO_WAKEUP;
        u64 *pending = unannounced.lookup(&zero);
        if (pending && ++*pending >= TLS_WAKEUP_EVERY) {
            *pending = 0;
            flags = BPF_RB_FORCE_WAKEUP;
        }
        if (tls_events.ringbuf_output(ev, offsetof(struct tls_event, data) + n, flags) < 0)
            stat_add(STAT_TLS_LOST, 1);
    }
    return 0;
}

/* int SSL_write(SSL *ssl, const void *buf, int num) / int SSL_read(SSL *ssl, void *buf, int num) */
int enter_write(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if (!wanted(id))
        return 0;
    struct ssl_call c = {.ssl = PT_REGS_PARM1(ctx), .buf = PT_REGS_PARM2(ctx), .done_ptr = 0};
    write_calls.update(&id, &c);
    return 0;
}

int enter_read(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if (!wanted(id))
        return 0;
    struct ssl_call c = {.ssl = PT_REGS_PARM1(ctx), .buf = PT_REGS_PARM2(ctx), .done_ptr = 0};
    read_calls.update(&id, &c);
    return 0;
}

/* int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written) / SSL_read_ex(..., size_t *readbytes) */
int enter_write_ex(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if (!wanted(id))
        return 0;
    struct ssl_call c = {.ssl = PT_REGS_PARM1(ctx), .buf = PT_REGS_PARM2(ctx), .done_ptr = PT_REGS_PARM4(ctx)};
    write_calls.update(&id, &c);
    return 0;
}

int enter_read_ex(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if (!wanted(id))
        return 0;
    struct ssl_call c = {.ssl = PT_REGS_PARM1(ctx), .buf = PT_REGS_PARM2(ctx), .done_ptr = PT_REGS_PARM4(ctx)};
    read_calls.update(&id, &c);
    return 0;
}

static __always_inline int leave(struct pt_regs *ctx, struct ssl_call *call, u8 direction) {
    long ret = PT_REGS_RC(ctx);
    u64 done = 0;
    if (call->done_ptr) {
        if (ret != 1 || bpf_probe_read_user(&done, sizeof(done), (void *)call->done_ptr) < 0)
            return 0;
    } else {
        if ((int)ret <= 0)
            return 0;
        done = (u32)(int)ret;
    }
    if (done == 0)
        return 0;
    return emit(ctx, call, done > 0xffffffffULL ? 0xffffffffU : (u32)done, direction);
}

int leave_write(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct ssl_call *call = write_calls.lookup(&id);
    if (!call)
        return 0;
    struct ssl_call c = *call;
    write_calls.delete(&id);
    return leave(ctx, &c, TLS_DIR_WRITE);
}

int leave_read(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct ssl_call *call = read_calls.lookup(&id);
    if (!call)
        return 0;
    struct ssl_call c = *call;
    read_calls.delete(&id);
    return leave(ctx, &c, TLS_DIR_READ);
}

TRACEPOINT_PROBE(sched, sched_process_exec) {
    struct exec_event ev = {};
    ev.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
    exec_events.ringbuf_output(&ev, sizeof(ev), 0); /* rare: one wake-up each is fine, and a lost one waits for the scan */
    return 0;
}
