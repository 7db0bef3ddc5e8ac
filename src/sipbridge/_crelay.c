/* The relay's hot path in compiled code, in a thread of its own (server/media/crelay.py drives it).
 *
 * One engine thread waits on epoll for the RTP sockets handed to it. Per ready socket it reads a
 * batch with recvmmsg and, for a leg that Python armed as a pure relay, does exactly what
 * media/relay.py does for an ordinary packet: the same checks (RTP version 2 with no padding,
 * extension or CSRC, the audio payload type, the latched source address, the current SSRC, a
 * sequence number ahead by less than MAX_DROPOUT), the same receive statistics (RFC 3550 A.1,
 * A.8: extended max sequence, cycles, jitter), the header rewritten in place for the listener
 * (its sequence number, the timestamp offset of its timeline, its SSRC and payload type, the
 * marker) and sent from the listener's socket with sendmmsg. Anything else - and every packet
 * of a leg that is not armed - is handed back unchanged: a queue and an eventfd that the event
 * loop watches, where the full path (RtpLeg.receive) takes it. A leg disarms itself on the first
 * packet it hands back, so that Python sees that packet and all that follow in order, until it
 * arms the leg again with its own state.
 *
 * Counters are kept as deltas since Python last collected them (`collect`), so the legs' objects
 * get exactly what the Python path would have added. The engine never takes the GIL; Python and
 * the thread share the state under one mutex, which the thread holds while it serves one ready
 * socket. Rounds start `batch_us` apart (unless one ran over, or found a flood), so that one
 * wake-up serves every socket that became ready meanwhile: a bounded added latency for far fewer
 * wake-ups than packets. While traffic is sparse the rounds stretch, up to `sparse_us` apart, so
 * that a round still finds about ROUND_TARGET datagrams: at 50 relayed calls (5 datagrams a
 * millisecond) a wake-up every millisecond cost the engine a tenth of its CPU, and those
 * wake-ups halve at 2 ms (for up to 1 ms more of added latency there; from 100 relayed calls on
 * the rounds are batch_us apart again). The engine reads a socket only while its slot is armed;
 * a slot that hands a packet back stops being read (the event loop reads it again), and a full
 * queue pauses the sockets until Python takes it, so nothing handed back is ever dropped here.
 *
 * Where the kernel allows it (and unless SIPBRIDGE_CRELAY_URING=0), the receives and sends of a
 * round go through io_uring instead, many sockets' in one system call (the io_uring mode:
 * uring_round); recvmmsg/sendmmsg stay the fallback.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "_sockaddr.h"

#if defined(__linux__) && defined(__has_include)
#if __has_include(<linux/io_uring.h>)
#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#if defined(__NR_io_uring_setup) && defined(__NR_io_uring_enter) && defined(IORING_FEAT_NODROP)
#define SIPBRIDGE_URING 1 /* the io_uring mode (below) is built; the kernel decides at start */
#endif
#endif
#endif

#define READ_SIZE 2048   /* as server/media/ports.py: larger datagrams are truncated, dropped */
#define BATCH 32         /* datagrams per recvmmsg */
#define LEVELS_KEPT 64   /* as media/levels.py MAX_PENDING */
#define MAX_DROPOUT 3000 /* as media/session.py */
#define MAX_SLOTS 65536
#define QUEUE_SIZE 4096  /* datagrams handed back and not yet taken by Python */
#define EVENTS 1024
#define WAKE_ID 0xFFFFFFFFu
/* Edge-triggered: a socket is reported when a datagram arrives, and serve_slot reads it until a
 * short batch (its queue empty at that moment) or pauses it (EPOLL_CTL_MOD re-arms it from its
 * state then), so no arrival is missed; level-triggered, every socket served was polled again at
 * the next epoll_wait only to be found empty - 5% of the process's CPU at 50 relayed calls. */
#define SOCKET_EVENTS (EPOLLIN | EPOLLET)
#define ROUND_TARGET 10.0 /* datagrams a round should find before rounds stretch past batch_ns */

typedef struct {
    double power;
    int size;
} level_t;

typedef struct {
    int fd;
    int family;
    uint32_t gen;
    /* armed: this slot's packets are forwarded to `target` */
    int armed;
    int target;
    int targeted; /* slots whose `target` is this one: a remove looks for them only then */
    int dirty; /* something to collect */
    int paused; /* not read while the queue is full */
    int active; /* read by the engine (only while armed: the event loop reads it otherwise) */
    int queued; /* handed back, not yet taken */
    /* the source's side (its receiver, latch, stats) */
    int audio_pt;
    struct sockaddr_storage latched;
    uint32_t ssrc;
    uint32_t max_seq;
    long long cycles;
    double jitter;
    int have_arrival;
    double last_arrival;
    uint32_t last_timestamp;
    double clock_rate;
    int level_kind; /* 0 none, 1 PCMU, 2 PCMA */
    level_t levels[LEVELS_KEPT];
    int level_head, level_count;
    long long d_packets, d_octets, d_count, truncated;
    double d_sum, last_now;
    /* the listener's side (its sender, timeline, stats): what this slot's packets become */
    struct sockaddr_storage dest;
    socklen_t dest_len;
    int out_pt;
    uint32_t out_seq, out_ssrc, ts_offset, frame_ticks;
    int marker_pending;
    long long d_out_packets, d_out_octets, d_send_errors;
    uint32_t last_stamp;
    double last_stamp_at;
    int sent;
    unsigned long long uring_round; /* the io_uring mode: the round its reads are counted in */
    int uring_reads, uring_errors;
} slot_t;

typedef struct {
    int slot;
    uint32_t gen;
    int len;
    double at;
    struct sockaddr_storage addr;
    unsigned char data[READ_SIZE];
} entry_t;

struct uring; /* the io_uring mode's ring and buffers, NULL in the recvmmsg mode */

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    pthread_t thread;
    int running;
    int stop;
    int epfd;
    int notify_fd; /* the thread -> the event loop: datagrams handed back */
    int wake_fd;   /* the event loop -> the thread: stop */
    int notified;
    int pushed; /* handed back in this round */
    slot_t **slots;
    int free_hint;
    int *paused; /* slots not read until Python takes the queue */
    int n_paused;
    entry_t *queue;
    int q_head, q_count;
    long batch_ns;
    long sparse_ns; /* the longest gap between rounds while traffic is sparse */
    double rate;    /* datagrams read per ns, a moving average over rounds */
    long moved;     /* datagrams read in this round */
    long gap_ns;    /* the last gap between rounds chosen (batch_ns .. sparse_ns) */
    double power[3][256];
    /* engine counters */
    unsigned long long rounds, forwarded, handed_back, queue_full, recv_calls, send_calls, pauses;
    /* the thread's buffers */
    unsigned char (*bufs)[READ_SIZE];
    struct mmsghdr rmsgs[BATCH], smsgs[BATCH];
    struct iovec riov[BATCH], siov[BATCH];
    struct sockaddr_storage raddr[BATCH];
    struct uring *uring;
    int uring_errno;  /* why there is no ring, when one was asked for */
    int uring_failed; /* the ring failed in use: back to recvmmsg/sendmmsg */
    unsigned long long enters; /* io_uring_enter calls */
} Engine;

static double monotonic_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A Python address tuple, as the socket module gives it, into `out`; 0 on success. */
static int parse_addr(PyObject *tuple, int family, struct sockaddr_storage *out, socklen_t *len) {
    const char *host;
    int port;
    unsigned int flow = 0, scope = 0;
    memset(out, 0, sizeof(*out));
    if (!PyTuple_Check(tuple)) {
        PyErr_SetString(PyExc_TypeError, "an address is a tuple");
        return -1;
    }
    if (family == AF_INET6) {
        if (!PyArg_ParseTuple(tuple, "si|II", &host, &port, &flow, &scope))
            return -1;
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)out;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        a->sin6_flowinfo = htonl(flow);
        a->sin6_scope_id = scope;
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) {
            PyErr_Format(PyExc_ValueError, "not an IPv6 address: %s", host);
            return -1;
        }
        if (len)
            *len = sizeof(*a);
        return 0;
    }
    if (!PyArg_ParseTuple(tuple, "si", &host, &port))
        return -1;
    struct sockaddr_in *a = (struct sockaddr_in *)out;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &a->sin_addr) != 1) {
        PyErr_Format(PyExc_ValueError, "not an IPv4 address: %s", host);
        return -1;
    }
    if (len)
        *len = sizeof(*a);
    return 0;
}

static PyObject *addr_tuple(const struct sockaddr_storage *addr) {
    char host[INET6_ADDRSTRLEN];
    if (addr->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        return Py_BuildValue("(siII)", host, ntohs(a->sin6_port), ntohl(a->sin6_flowinfo),
                             a->sin6_scope_id);
    }
    const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    return Py_BuildValue("(si)", host, ntohs(a->sin_port));
}

/* -- the thread ------------------------------------------------------------------------------ */

static void set_active(Engine *e, int idx, slot_t *s, int active) {
    if (s->active == active)
        return;
    struct epoll_event ev = {.events = active ? SOCKET_EVENTS : 0,
                             .data.u64 = ((uint64_t)s->gen << 32) | (uint32_t)idx};
    epoll_ctl(e->epfd, EPOLL_CTL_MOD, s->fd, &ev);
    s->active = active;
    s->paused = 0;
}

static void hand_back(Engine *e, int idx, slot_t *s, const unsigned char *data, int len,
                      const struct sockaddr_storage *addr, double now) {
    /* this packet goes to Python, and so does the socket: the event loop reads what follows,
     * in order, until the slot is armed again */
    s->armed = 0;
    set_active(e, idx, s, 0);
    if (e->q_count >= QUEUE_SIZE) {
        e->queue_full++;
        return;
    }
    entry_t *q = &e->queue[(e->q_head + e->q_count) % QUEUE_SIZE];
    e->q_count++;
    q->slot = idx;
    q->gen = s->gen;
    q->len = len;
    q->at = now;
    q->addr = *addr;
    memcpy(q->data, data, (size_t)len);
    s->queued++;
    e->handed_back++;
    e->pushed = 1;
}

/* media/relay.py's relay_datagram for an armed slot: 1 when forwarded (rewritten in place). */
static int relay_one(Engine *e, slot_t *s, unsigned char *buf, int size,
                     const struct sockaddr_storage *addr, double now) {
    if (size <= 12 || buf[0] != 0x80)
        return 0;
    unsigned int second = buf[1];
    if ((int)(second & 0x7F) != s->audio_pt || !addr_equal(addr, &s->latched))
        return 0;
    uint32_t seq = ((uint32_t)buf[2] << 8) | buf[3];
    uint32_t timestamp = ((uint32_t)buf[4] << 24) | ((uint32_t)buf[5] << 16) |
                         ((uint32_t)buf[6] << 8) | buf[7];
    uint32_t ssrc = ((uint32_t)buf[8] << 24) | ((uint32_t)buf[9] << 16) |
                    ((uint32_t)buf[10] << 8) | buf[11];
    if (ssrc != s->ssrc)
        return 0;
    uint32_t delta = (seq - s->max_seq) & 0xFFFF;
    if (!(0 < delta && delta < MAX_DROPOUT))
        return 0;
    /* accepted: the source's side */
    s->last_now = now;
    s->d_packets++;
    if (seq < s->max_seq)
        s->cycles += 0x10000;
    s->max_seq = seq;
    int payload = size - 12;
    s->d_octets += payload;
    if (s->have_arrival) {
        int32_t transit = (int32_t)(timestamp - s->last_timestamp);
        double d = (now - s->last_arrival) * s->clock_rate - (double)transit;
        if (d < 0)
            d = -d;
        s->jitter += (d - s->jitter) / 16;
        s->d_sum += d;
        s->d_count++;
    }
    s->have_arrival = 1;
    s->last_arrival = now;
    s->last_timestamp = timestamp;
    if (s->level_kind) {
        const double *table = e->power[s->level_kind];
        double power = 0.0;
        for (int i = 12; i < size; i++)
            power += table[buf[i]];
        level_t *l = &s->levels[(s->level_head + s->level_count) % LEVELS_KEPT];
        if (s->level_count == LEVELS_KEPT)
            s->level_head = (s->level_head + 1) % LEVELS_KEPT; /* a deque(maxlen) drops the oldest */
        else
            s->level_count++;
        l->power = power;
        l->size = payload;
    }
    /* the listener's side */
    uint32_t stamp = timestamp + s->ts_offset;
    s->last_stamp = stamp;
    s->last_stamp_at = now;
    if (s->marker_pending) {
        second |= 0x80;
        s->marker_pending = 0;
    }
    uint32_t out_seq = s->out_seq;
    buf[0] = 0x80;
    buf[1] = (unsigned char)((second & 0x80) | (unsigned int)s->out_pt);
    buf[2] = (unsigned char)(out_seq >> 8);
    buf[3] = (unsigned char)out_seq;
    buf[4] = (unsigned char)(stamp >> 24);
    buf[5] = (unsigned char)(stamp >> 16);
    buf[6] = (unsigned char)(stamp >> 8);
    buf[7] = (unsigned char)stamp;
    buf[8] = (unsigned char)(s->out_ssrc >> 24);
    buf[9] = (unsigned char)(s->out_ssrc >> 16);
    buf[10] = (unsigned char)(s->out_ssrc >> 8);
    buf[11] = (unsigned char)s->out_ssrc;
    s->out_seq = (out_seq + 1) & 0xFFFF;
    s->d_out_packets++;
    s->d_out_octets += payload;
    s->sent = 1;
    s->dirty = 1;
    return 1;
}

static void send_batch(Engine *e, int fd, int count, slot_t *s) {
    int done = 0;
    while (done < count) {
        int n = sendmmsg(fd, &e->smsgs[done], (unsigned int)(count - done), MSG_DONTWAIT);
        e->send_calls++;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            n = 0;
        }
        done += n;
        if (done < count) {
            /* a full socket buffer or an unreachable peer: this packet is dropped, never blocks */
            s->d_send_errors++;
            s->dirty = 1;
            done++;
        }
    }
}

/* Reads the socket of slot `idx` to EAGAIN; returns 1 when it was busy (a whole batch at once). */
static int serve_slot(Engine *e, int idx, slot_t *s) {
    int busy = 0;
    int errors = 0;
    for (;;) {
        /* Never read more than the queue can take back: when it is full, the socket waits (its
         * kernel buffer fills, as it would for a busy event loop) until Python takes the queue. */
        int room = QUEUE_SIZE - e->q_count;
        int vlen = room < BATCH ? room : BATCH;
        if (vlen == 0) {
            if (!s->paused) {
                struct epoll_event ev = {.events = 0, .data.u64 = ((uint64_t)s->gen << 32) | (uint32_t)idx};
                epoll_ctl(e->epfd, EPOLL_CTL_MOD, s->fd, &ev);
                s->paused = 1;
                e->paused[e->n_paused++] = idx;
                e->pauses++;
            }
            return 1;
        }
        for (int i = 0; i < vlen; i++) {
            e->rmsgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
            e->rmsgs[i].msg_hdr.msg_flags = 0;
        }
        int n = recvmmsg(s->fd, e->rmsgs, (unsigned int)vlen, MSG_DONTWAIT, NULL);
        e->recv_calls++;
        if (n > 0)
            e->moved += n;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return busy;
            /* ICMP port unreachable for an earlier send and the like: nothing to read */
            if (++errors < 4)
                continue;
            return busy;
        }
        double now = monotonic_now();
        int nsend = 0;
        for (int i = 0; i < n; i++) {
            int len = (int)e->rmsgs[i].msg_len;
            if ((e->rmsgs[i].msg_hdr.msg_flags & MSG_TRUNC) || len >= READ_SIZE) {
                s->truncated++;
                s->dirty = 1;
                continue;
            }
            unsigned char *buf = e->bufs[i];
            if (s->armed && relay_one(e, s, buf, len, &e->raddr[i], now)) {
                e->siov[nsend].iov_base = buf;
                e->siov[nsend].iov_len = (size_t)len;
                struct msghdr *h = &e->smsgs[nsend].msg_hdr;
                h->msg_name = &s->dest;
                h->msg_namelen = s->dest_len;
                nsend++;
                e->forwarded++;
            } else {
                hand_back(e, idx, s, buf, len, &e->raddr[i], now);
            }
        }
        if (nsend) {
            slot_t *t = e->slots[s->target];
            if (t != NULL)
                send_batch(e, t->fd, nsend, s);
        }
        if (n < vlen)
            return busy;
        busy = 1;
    }
}

/* -- the io_uring mode (the default; SIPBRIDGE_CRELAY_URING=0 turns it off) ----------------- */
/* The same rounds, the same checks and hand-backs, with the system calls batched across sockets
 * (issue 18: at 800 relayed calls each socket has one datagram a round, so recvmmsg and sendmmsg
 * moved one datagram per call - two system calls a packet). The engine still waits on epoll
 * (edge-triggered, as above) for the ready sockets; then, a chunk of them at a time (up to
 * URING_CHUNK receives, the lock held as serve_slot holds it for one socket), one io_uring_enter
 * submits a receive (IORING_OP_RECVMSG, MSG_DONTWAIT: completed at once, -EAGAIN when empty) for
 * each and waits for them, and a second one the sends (IORING_OP_SENDMSG, from the listener's
 * socket) of the datagrams forwarded. A socket is read to -EAGAIN, as serve_slot reads it (UDP
 * sets no IORING_CQE_F_SOCK_NONEMPTY, so the last receive of each socket is the empty one, as
 * recvmmsg's is inside the kernel), and never past the room left in the queue: a socket with no
 * room is paused as serve_slot pauses it. Per datagram the kernel does what it did (the UDP
 * receive and send, and the operation's own setup); what goes is the system call around each -
 * a tenth of the engine's CPU a packet, measured (the UDP work is the rest). Raw system calls
 * (linux/io_uring.h), no liburing. Asked for by default (Engine(..., uring=True);
 * SIPBRIDGE_CRELAY_URING=0 turns it off). It holds the lock for a chunk of sockets, not one;
 * measured beside the recvmmsg mode at 200-800 relayed calls (bench/media.py, a quiet machine):
 * 0.82-0.92x its CPU a call at the same added latency. io_uring_setup failing (ENOSYS, EPERM from
 * a seccomp policy, kernel.io_uring_disabled) leaves the engine on recvmmsg/sendmmsg;
 * counters()["uring"] says which, counters()["enters"] counts the io_uring_enter calls
 * (recv_calls and send_calls count the operations in this mode). */

#ifdef SIPBRIDGE_URING
#define URING_CHUNK BATCH /* receives a submission makes (the lock is held for one chunk) */
#define URING_OPS (2 * URING_CHUNK) /* a chunk's receives and the sends the previous ones made */
#define URING_SEND 0x80000000u   /* user_data: a send (else a receive), and the buffer's index */

struct uring {
    int fd;
    unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    void *sq_map, *cq_map, *sqe_map;
    size_t sq_size, cq_size, sqe_size;
    unsigned tail;     /* the next SQE's place (only the engine's thread writes SQEs) */
    unsigned queued;   /* SQEs written and not yet taken by the kernel */
    unsigned inflight; /* submitted and not yet reaped, with those queued */
    /* buffer k (of 2 halves of URING_CHUNK: a chunk's receives go into one half while the
     * sends of the previous receives leave from the other) */
    unsigned char (*bufs)[READ_SIZE];
    struct msghdr rmsg[URING_OPS], smsg[URING_OPS];
    struct iovec riov[URING_OPS], siov[URING_OPS];
    struct sockaddr_storage raddr[URING_OPS];
    int res[URING_OPS];       /* a receive's result */
    int send_from[URING_OPS]; /* the slot whose datagram a send carries */
};

static void uring_free(struct uring *u) {
    if (u == NULL)
        return;
    if (u->sqe_map != NULL && u->sqe_map != MAP_FAILED)
        munmap(u->sqe_map, u->sqe_size);
    if (u->cq_map != NULL && u->cq_map != MAP_FAILED && u->cq_map != u->sq_map)
        munmap(u->cq_map, u->cq_size);
    if (u->sq_map != NULL && u->sq_map != MAP_FAILED)
        munmap(u->sq_map, u->sq_size);
    if (u->fd >= 0)
        close(u->fd);
    free(u->bufs);
    free(u);
}

/* A ring for the engine, or NULL (errno set) where io_uring cannot be had. */
static struct uring *uring_new(void) {
    struct uring *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return NULL;
    u->fd = -1;
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    /* completions need no interrupt of the thread (kernel 5.19+, else plain). (Not
     * SINGLE_ISSUER: the ring is made here, on Python's thread, and used on the engine's.) */
    p.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN;
    u->fd = (int)syscall(__NR_io_uring_setup, 2 * URING_OPS, &p);
    if (u->fd < 0 && errno == EINVAL) {
        memset(&p, 0, sizeof(p));
        u->fd = (int)syscall(__NR_io_uring_setup, 2 * URING_OPS, &p);
    }
    if (u->fd < 0)
        goto fail;
    if (!(p.features & IORING_FEAT_NODROP) || p.cq_entries < 2 * URING_OPS) {
        errno = ENOSYS; /* a kernel older than 5.5: not worth its quirks */
        goto fail;
    }
    u->sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    u->cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        if (u->cq_size > u->sq_size)
            u->sq_size = u->cq_size;
        u->cq_size = u->sq_size;
    }
    u->sq_map = mmap(NULL, u->sq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd,
                     IORING_OFF_SQ_RING);
    if (u->sq_map == MAP_FAILED)
        goto fail;
    if (p.features & IORING_FEAT_SINGLE_MMAP)
        u->cq_map = u->sq_map;
    else
        u->cq_map = mmap(NULL, u->cq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                         u->fd, IORING_OFF_CQ_RING);
    if (u->cq_map == MAP_FAILED)
        goto fail;
    u->sqe_size = p.sq_entries * sizeof(struct io_uring_sqe);
    u->sqe_map = mmap(NULL, u->sqe_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd,
                      IORING_OFF_SQES);
    if (u->sqe_map == MAP_FAILED)
        goto fail;
    char *sq = u->sq_map, *cq = u->cq_map;
    u->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    u->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    u->sq_array = (unsigned *)(sq + p.sq_off.array);
    u->cq_head = (unsigned *)(cq + p.cq_off.head);
    u->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    u->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    u->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    u->sqes = u->sqe_map;
    u->bufs = malloc((size_t)READ_SIZE * URING_OPS);
    if (u->bufs == NULL)
        goto fail;
    for (int k = 0; k < URING_OPS; k++) {
        u->riov[k].iov_base = u->bufs[k];
        u->riov[k].iov_len = READ_SIZE;
        u->rmsg[k].msg_iov = &u->riov[k];
        u->rmsg[k].msg_iovlen = 1;
        u->rmsg[k].msg_name = &u->raddr[k];
        u->siov[k].iov_base = u->bufs[k];
        u->smsg[k].msg_iov = &u->siov[k];
        u->smsg[k].msg_iovlen = 1;
    }
    return u;
fail: {
    int err = errno;
    uring_free(u);
    errno = err;
    return NULL;
}
}

static struct io_uring_sqe *uring_sqe(struct uring *u) {
    unsigned at = u->tail++ & *u->sq_mask;
    struct io_uring_sqe *sqe = &u->sqes[at];
    memset(sqe, 0, sizeof(*sqe));
    u->sq_array[at] = at;
    u->queued++;
    u->inflight++;
    return sqe;
}

/* Submits what is queued and waits for every operation in flight; their results reaped into
 * u->res (receives) and the sources' send errors. 0, or -1 when the ring failed. */
static int uring_run(Engine *e, struct uring *u) {
    __atomic_store_n(u->sq_tail, u->tail, __ATOMIC_RELEASE);
    int failures = 0;
    while (u->inflight > 0) {
        unsigned head = *u->cq_head;
        unsigned tail = __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE);
        if (u->queued > 0 || head == tail) {
            long rc = syscall(__NR_io_uring_enter, u->fd, u->queued, u->inflight,
                              IORING_ENTER_GETEVENTS, NULL, 0);
            e->enters++;
            if (rc < 0) {
                if ((errno == EINTR || errno == EAGAIN || errno == EBUSY) && ++failures < 100)
                    continue;
                return -1;
            }
            u->queued -= (unsigned)rc < u->queued ? (unsigned)rc : u->queued;
            continue;
        }
        for (; head != tail; head++) {
            struct io_uring_cqe *cqe = &u->cqes[head & *u->cq_mask];
            unsigned k = (unsigned)cqe->user_data;
            if (k & URING_SEND) {
                k &= ~URING_SEND;
                if (cqe->res < 0 && k < URING_OPS) {
                    /* a full socket buffer or an unreachable peer: dropped, never blocks */
                    slot_t *s = e->slots[u->send_from[k]];
                    if (s != NULL) {
                        s->d_send_errors++;
                        s->dirty = 1;
                    }
                }
            } else if (k < URING_OPS) {
                u->res[k] = cqe->res;
            }
            u->inflight--;
        }
        __atomic_store_n(u->cq_head, head, __ATOMIC_RELEASE);
    }
    return 0;
}

/* One pass over the ready sockets `ready[0..n)` (slot indices, valid under the lock, which the
 * caller holds): `want[i]` receives for socket i, submitted together; the datagrams taken as
 * serve_slot takes them, socket by socket in order; the sends of those forwarded submitted
 * together. The sockets whose last receive found a datagram (not yet read to the end) are added
 * to `again`. 1 when a socket was busy (a batch's worth read in this round), -1 when the ring
 * failed (the engine goes back to recvmmsg; what this pass read and did not send is lost). */
static int uring_serve(Engine *e, struct uring *u, const int *ready, const int *want, int n,
                       int *again, int *n_again) {
    int found = 0;
    int busy = 0, nrecv = 0;
    int slot_of[URING_CHUNK];
    int room = QUEUE_SIZE - e->q_count; /* never more than the queue can take back */
    for (int i = 0; i < n; i++) {
        int idx = ready[i];
        slot_t *s = e->slots[idx];
        if (nrecv + want[i] > room) {
            if (!s->paused) { /* as serve_slot: read again once Python takes the queue */
                struct epoll_event ev = {.events = 0,
                                         .data.u64 = ((uint64_t)s->gen << 32) | (uint32_t)idx};
                epoll_ctl(e->epfd, EPOLL_CTL_MOD, s->fd, &ev);
                s->paused = 1;
                e->paused[e->n_paused++] = idx;
                e->pauses++;
            }
            busy = 1;
            continue;
        }
        for (int w = 0; w < want[i]; w++) {
            int k = nrecv++;
            u->rmsg[k].msg_namelen = sizeof(struct sockaddr_storage);
            u->rmsg[k].msg_flags = 0;
            struct io_uring_sqe *sqe = uring_sqe(u);
            sqe->opcode = IORING_OP_RECVMSG;
            sqe->fd = s->fd;
            sqe->addr = (uint64_t)(uintptr_t)&u->rmsg[k];
            sqe->len = 1;
            sqe->msg_flags = MSG_DONTWAIT;
            sqe->user_data = (uint64_t)k;
            slot_of[k] = idx;
            e->recv_calls++;
        }
    }
    if (nrecv == 0)
        return busy;
    if (uring_run(e, u) < 0)
        return -1;
    double now = monotonic_now();
    for (int k = 0; k < nrecv; k++) {
        int idx = slot_of[k];
        slot_t *s = e->slots[idx];
        int len = u->res[k];
        if (k + 1 == nrecv || slot_of[k + 1] != idx) { /* its last receive in this pass */
            /* a datagram: not read to the end yet. An error (ICMP port unreachable for an
             * earlier send and the like): nothing read, tried again as serve_slot tries. */
            int more = len >= 0 || (len != -EAGAIN && len != -EWOULDBLOCK &&
                                    (len == -EINTR || ++s->uring_errors < 4));
            if (more && s->active && !s->paused)
                again[found++] = idx; /* read again in this round */
        }
        if (len < 0)
            continue;
        e->moved++;
        if (++s->uring_reads >= BATCH)
            busy = 1; /* a flood, as a full recvmmsg batch is */
        if ((u->rmsg[k].msg_flags & MSG_TRUNC) || len >= READ_SIZE) {
            s->truncated++;
            s->dirty = 1;
            continue;
        }
        unsigned char *buf = u->bufs[k];
        if (s->armed && relay_one(e, s, buf, len, &u->raddr[k], now)) {
            e->forwarded++;
            slot_t *t = e->slots[s->target];
            if (t == NULL)
                continue;
            u->siov[k].iov_len = (size_t)len;
            u->smsg[k].msg_name = &s->dest;
            u->smsg[k].msg_namelen = s->dest_len;
            u->send_from[k] = idx;
            struct io_uring_sqe *sqe = uring_sqe(u);
            sqe->opcode = IORING_OP_SENDMSG;
            sqe->fd = t->fd;
            sqe->addr = (uint64_t)(uintptr_t)&u->smsg[k];
            sqe->len = 1;
            sqe->msg_flags = MSG_DONTWAIT;
            sqe->user_data = (uint64_t)k | URING_SEND;
            e->send_calls++;
        } else {
            hand_back(e, idx, s, buf, len, &u->raddr[k], now);
        }
    }
    *n_again += found;
    if (u->inflight > 0 && uring_run(e, u) < 0)
        return -1;
    return busy;
}

/* A round: the ready sockets served in chunks (up to URING_CHUNK receives each, the lock held
 * for one chunk, as it is held for one socket in serve_slot), a receive per socket; then the
 * sockets that yielded a datagram to their last receive are served again - as many receives for
 * a socket as it yielded so far in this round, up to BATCH - until every one was read to -EAGAIN,
 * as serve_slot reads it (the sockets are edge-triggered: UDP sets no
 * IORING_CQE_F_SOCK_NONEMPTY, so the empty receive is the one that says so). A socket that had
 * one datagram costs two receives and a send, three operations in two submissions shared with
 * the chunk's other sockets. A socket handed back is not read further here: the event loop reads
 * what follows it, after the queue. 1 when a socket was busy. Should the ring fail, the engine
 * goes on with serve_slot. */
static int uring_round(Engine *e, struct epoll_event *events, int n, int *stop) {
    int busy = 0;
    unsigned long long round = e->rounds + 1;
    static int todo[EVENTS];      /* the sockets to read in this pass (the engine's thread) */
    static uint32_t gens[EVENTS]; /* and their slots' generations */
    int n_todo = 0;
    for (int i = 0; i < n; i++) {
        uint64_t data = events[i].data.u64;
        uint32_t idx = (uint32_t)data;
        if (idx == WAKE_ID || idx >= MAX_SLOTS)
            continue;
        todo[n_todo] = (int)idx;
        gens[n_todo++] = (uint32_t)(data >> 32);
    }
    while (n_todo > 0 && !*stop) {
        int n_again = 0;
        for (int i = 0; i < n_todo && !*stop;) {
            int ready[URING_CHUNK], want[URING_CHUNK], nr = 0, ops = 0;
            pthread_mutex_lock(&e->lock);
            *stop = e->stop;
            for (; i < n_todo && !*stop; i++) {
                int idx = todo[i];
                slot_t *s = e->slots[idx];
                if (s == NULL || s->gen != gens[i] || !s->active || s->paused)
                    continue;
                if (e->uring == NULL) { /* failed below: the rest as before */
                    busy |= serve_slot(e, idx, s);
                    continue;
                }
                if (s->uring_round != round) {
                    s->uring_round = round;
                    s->uring_reads = s->uring_errors = 0;
                }
                /* never more than a chunk takes, or no chunk would ever take it */
                int most = BATCH < URING_CHUNK ? BATCH : URING_CHUNK;
                int w = s->uring_reads < 1 ? 1 : s->uring_reads > most ? most : s->uring_reads;
                if (ops + w > URING_CHUNK)
                    break;
                ready[nr] = idx;
                want[nr++] = w;
                ops += w;
            }
            if (nr > 0) {
                /* the sockets to read again are kept in place: as many as were read, at most */
                int first = n_again;
                int rc = uring_serve(e, e->uring, ready, want, nr, todo + n_again, &n_again);
                for (int k = first; k < n_again; k++)
                    gens[k] = e->slots[todo[k]]->gen;
                if (rc < 0) {
                    /* its operations may still be in flight on its buffers: never freed */
                    e->uring = NULL;
                    e->uring_failed = 1;
                } else {
                    busy |= rc;
                }
            }
            pthread_mutex_unlock(&e->lock);
        }
        if (*stop || e->uring == NULL)
            break;
        n_todo = n_again;
    }
    return busy;
}
#endif

/* How long after the start of this round the next one starts: batch_ns while a round finds
 * ROUND_TARGET datagrams or more at that pace, longer (up to sparse_ns) while traffic is sparse.
 * The pace is a moving average of the datagrams read per ns since the previous round began. */
static long round_gap(Engine *e, const struct timespec *started, struct timespec *last) {
    long moved = e->moved;
    e->moved = 0;
    if (e->sparse_ns <= e->batch_ns)
        return e->batch_ns;
    if (last->tv_sec || last->tv_nsec) {
        double elapsed = (double)(started->tv_sec - last->tv_sec) * 1e9 +
                         (double)(started->tv_nsec - last->tv_nsec);
        if (elapsed > 0) {
            double sample = (double)moved / elapsed;
            e->rate += (sample - e->rate) / 8;
        }
    }
    *last = *started;
    if (e->rate * (double)e->batch_ns >= ROUND_TARGET)
        return e->batch_ns;
    if (e->rate * (double)e->sparse_ns <= ROUND_TARGET)
        return e->sparse_ns;
    return (long)(ROUND_TARGET / e->rate);
}

static void *engine_thread(void *arg) {
    Engine *e = (Engine *)arg;
    struct epoll_event events[EVENTS];
    struct timespec last_start = {0, 0};
    for (;;) {
        int n = epoll_wait(e->epfd, events, EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        int busy = 0, stop = 0;
        struct timespec started;
        clock_gettime(CLOCK_MONOTONIC, &started);
#ifdef SIPBRIDGE_URING
        if (e->uring != NULL)
            busy = uring_round(e, events, n, &stop);
        else
#endif
        /* The lock is taken per socket, not per round: Python (a sync, an arm) waits for one
         * socket's batch at most. */
        for (int i = 0; i < n && !stop; i++) {
            uint64_t data = events[i].data.u64;
            uint32_t idx = (uint32_t)data, gen = (uint32_t)(data >> 32);
            if (idx == WAKE_ID)
                continue;
            pthread_mutex_lock(&e->lock);
            stop = e->stop;
            slot_t *s = idx < MAX_SLOTS ? e->slots[idx] : NULL;
            if (!stop && s != NULL && s->gen == gen)
                busy |= serve_slot(e, (int)idx, s);
            pthread_mutex_unlock(&e->lock);
        }
        pthread_mutex_lock(&e->lock);
        stop |= e->stop;
        e->rounds++;
        int notify = e->pushed && !e->notified;
        e->pushed = 0;
        if (notify)
            e->notified = 1;
        long batch_ns = e->gap_ns = round_gap(e, &started, &last_start);
        pthread_mutex_unlock(&e->lock);
        if (stop)
            break;
        if (notify) {
            uint64_t one = 1;
            ssize_t w = write(e->notify_fd, &one, sizeof(one));
            (void)w;
        }
        if (batch_ns > 0 && !busy) {
            /* Rounds on a cadence of batch_ns from the start of this one: what arrives meanwhile
             * waits at most that long, and one wake-up serves every socket that became ready.
             * A round that ran longer, or found a socket busy (a flood), is followed at once. */
            struct timespec next = started;
            next.tv_nsec += batch_ns;
            while (next.tv_nsec >= 1000000000L) {
                next.tv_nsec -= 1000000000L;
                next.tv_sec++;
            }
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        }
    }
    return NULL;
}

/* -- the Python object ----------------------------------------------------------------------- */

static void engine_stop(Engine *e) {
    if (!e->running)
        return;
    pthread_mutex_lock(&e->lock);
    e->stop = 1;
    pthread_mutex_unlock(&e->lock);
    uint64_t one = 1;
    ssize_t w = write(e->wake_fd, &one, sizeof(one));
    (void)w;
    Py_BEGIN_ALLOW_THREADS pthread_join(e->thread, NULL);
    Py_END_ALLOW_THREADS e->running = 0;
}

static void lock_engine(Engine *e) {
    if (pthread_mutex_trylock(&e->lock) == 0)
        return;
    Py_BEGIN_ALLOW_THREADS pthread_mutex_lock(&e->lock);
    Py_END_ALLOW_THREADS
}

static int Engine_init(Engine *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"ulaw_power", "alaw_power", "batch_us", "sparse_us", "uring", NULL};
    Py_buffer ulaw, alaw;
    long batch_us = 1000, sparse_us = -1;
    int want_uring = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*y*|llp", kwlist, &ulaw, &alaw, &batch_us,
                                     &sparse_us, &want_uring))
        return -1;
    if (ulaw.len != 256 * sizeof(double) || alaw.len != 256 * sizeof(double)) {
        PyBuffer_Release(&ulaw);
        PyBuffer_Release(&alaw);
        PyErr_SetString(PyExc_ValueError, "power tables are 256 float64 each");
        return -1;
    }
    memset(self->power[0], 0, sizeof(self->power[0]));
    memcpy(self->power[1], ulaw.buf, 256 * sizeof(double));
    memcpy(self->power[2], alaw.buf, 256 * sizeof(double));
    PyBuffer_Release(&ulaw);
    PyBuffer_Release(&alaw);
    if (self->slots != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "already initialised");
        return -1;
    }
    self->batch_ns = batch_us > 0 ? batch_us * 1000L : 0;
    self->gap_ns = self->batch_ns;
    self->sparse_ns = sparse_us > 0 ? sparse_us * 1000L : self->batch_ns; /* -1: no stretching */
    if (self->sparse_ns > 1000000000L)
        self->sparse_ns = 1000000000L;
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    self->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->slots = calloc(MAX_SLOTS, sizeof(slot_t *));
    self->queue = malloc(sizeof(entry_t) * QUEUE_SIZE);
    self->bufs = malloc((size_t)READ_SIZE * BATCH);
    self->paused = calloc(MAX_SLOTS, sizeof(int));
    if (self->epfd < 0 || self->notify_fd < 0 || self->wake_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (!self->slots || !self->queue || !self->bufs || !self->paused) {
        PyErr_NoMemory();
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = WAKE_ID};
    epoll_ctl(self->epfd, EPOLL_CTL_ADD, self->wake_fd, &ev);
    for (int i = 0; i < BATCH; i++) {
        self->riov[i].iov_base = self->bufs[i];
        self->riov[i].iov_len = READ_SIZE;
        memset(&self->rmsgs[i], 0, sizeof(self->rmsgs[i]));
        self->rmsgs[i].msg_hdr.msg_iov = &self->riov[i];
        self->rmsgs[i].msg_hdr.msg_iovlen = 1;
        self->rmsgs[i].msg_hdr.msg_name = &self->raddr[i];
        memset(&self->smsgs[i], 0, sizeof(self->smsgs[i]));
        self->smsgs[i].msg_hdr.msg_iov = &self->siov[i];
        self->smsgs[i].msg_hdr.msg_iovlen = 1;
    }
    pthread_mutex_init(&self->lock, NULL);
#ifdef SIPBRIDGE_URING
    if (want_uring && (self->uring = uring_new()) == NULL)
        self->uring_errno = errno;
#else
    if (want_uring)
        self->uring_errno = ENOSYS;
#endif
    return 0;
}

static void Engine_dealloc(Engine *self) {
    engine_stop(self);
#ifdef SIPBRIDGE_URING
    uring_free(self->uring); /* the thread is stopped: nothing in flight */
    self->uring = NULL;
#endif
    if (self->slots) {
        for (int i = 0; i < MAX_SLOTS; i++)
            free(self->slots[i]);
        free(self->slots);
    }
    free(self->queue);
    free(self->bufs);
    free(self->paused);
    if (self->epfd > 0)
        close(self->epfd);
    if (self->notify_fd > 0)
        close(self->notify_fd);
    if (self->wake_fd > 0)
        close(self->wake_fd);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Engine_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Engine *self = (Engine *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->epfd = self->notify_fd = self->wake_fd = -1;
    }
    return (PyObject *)self;
}

static int check_open(Engine *e) {
    if (e->slots == NULL || e->stop) {
        PyErr_SetString(PyExc_RuntimeError, "the relay engine is closed");
        return -1;
    }
    return 0;
}

static slot_t *get_slot(Engine *e, int idx) {
    if (idx < 0 || idx >= MAX_SLOTS || e->slots[idx] == NULL) {
        PyErr_Format(PyExc_KeyError, "no slot %d", idx);
        return NULL;
    }
    return e->slots[idx];
}

static PyObject *Engine_add(Engine *self, PyObject *args) {
    int fd, family;
    if (!PyArg_ParseTuple(args, "ii", &fd, &family) || check_open(self) < 0)
        return NULL;
    slot_t *s = calloc(1, sizeof(slot_t));
    if (s == NULL)
        return PyErr_NoMemory();
    s->fd = fd;
    s->family = family;
    s->target = -1;
    lock_engine(self);
    int idx = -1;
    for (int n = 0; n < MAX_SLOTS; n++) {
        int i = (self->free_hint + n) % MAX_SLOTS;
        if (self->slots[i] == NULL) {
            idx = i;
            break;
        }
    }
    if (idx < 0) {
        pthread_mutex_unlock(&self->lock);
        free(s);
        PyErr_SetString(PyExc_OSError, "the relay engine is full");
        return NULL;
    }
    static uint32_t generation = 0;
    s->gen = ++generation;
    self->slots[idx] = s;
    self->free_hint = idx + 1;
    struct epoll_event ev = {.events = 0, .data.u64 = ((uint64_t)s->gen << 32) | (uint32_t)idx};
    int rc = epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev); /* read once armed */
    if (rc < 0) {
        int err = errno;
        self->slots[idx] = NULL;
        pthread_mutex_unlock(&self->lock);
        free(s);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    pthread_mutex_unlock(&self->lock);
    if (!self->running) {
        if (pthread_create(&self->thread, NULL, engine_thread, self) != 0) {
            PyErr_SetString(PyExc_OSError, "cannot start the relay thread");
            return NULL;
        }
        self->running = 1;
    }
    return PyLong_FromLong(idx);
}

static PyObject *Engine_remove(Engine *self, PyObject *args) {
    int idx;
    if (!PyArg_ParseTuple(args, "i", &idx))
        return NULL;
    if (self->slots == NULL)
        Py_RETURN_NONE;
    lock_engine(self);
    slot_t *s = idx >= 0 && idx < MAX_SLOTS ? self->slots[idx] : NULL;
    if (s != NULL) {
        epoll_ctl(self->epfd, EPOLL_CTL_DEL, s->fd, NULL);
        self->slots[idx] = NULL;
        slot_t *t = s->target >= 0 ? self->slots[s->target] : NULL;
        if (t != NULL)
            t->targeted--;
        /* Nobody forwards into a socket about to close. The pass over every slot (65,536
         * pointers, the GIL held) only when some slot targets this one: a call's end cost it
         * every time before (issue 18: 2% of the loop's CPU at 200 inbound calls/s). */
        for (int i = 0; s->targeted > 0 && i < MAX_SLOTS; i++) {
            slot_t *o = self->slots[i];
            if (o != NULL && o->target == idx) {
                o->armed = 0;
                o->target = -1;
                s->targeted--;
            }
        }
    }
    pthread_mutex_unlock(&self->lock);
    free(s);
    Py_RETURN_NONE;
}

static PyObject *Engine_arm(Engine *self, PyObject *args) {
    int idx, target, audio_pt, level_kind, out_pt, marker;
    PyObject *latched, *dest, *last_arrival, *cycles_obj;
    unsigned int ssrc, max_seq, last_ts, out_seq, out_ssrc, offset, frame_ticks;
    double jitter, clock_rate;
    if (!PyArg_ParseTuple(args, "iiiOIIOdOIdiOiIIIpI", &idx, &target, &audio_pt, &latched, &ssrc,
                          &max_seq, &cycles_obj, &jitter, &last_arrival, &last_ts, &clock_rate,
                          &level_kind, &dest, &out_pt, &out_seq, &out_ssrc, &offset, &marker,
                          &frame_ticks))
        return NULL;
    if (check_open(self) < 0)
        return NULL;
    long long cycles = PyLong_AsLongLong(cycles_obj);
    if (cycles == -1 && PyErr_Occurred())
        return NULL;
    double arrival = 0.0;
    int have_arrival = last_arrival != Py_None;
    if (have_arrival) {
        arrival = PyFloat_AsDouble(last_arrival);
        if (arrival == -1.0 && PyErr_Occurred())
            return NULL;
    }
    if (level_kind < 0 || level_kind > 2) {
        PyErr_SetString(PyExc_ValueError, "level kind is 0, 1 or 2");
        return NULL;
    }
    lock_engine(self);
    slot_t *s = get_slot(self, idx);
    slot_t *t = get_slot(self, target);
    if (s == NULL || t == NULL) {
        pthread_mutex_unlock(&self->lock);
        return NULL;
    }
    struct sockaddr_storage latched_addr, dest_addr;
    socklen_t dest_len = 0;
    if (parse_addr(latched, s->family, &latched_addr, NULL) < 0 ||
        parse_addr(dest, t->family, &dest_addr, &dest_len) < 0) {
        pthread_mutex_unlock(&self->lock);
        return NULL;
    }
    if (s->queued > 0 || s->dirty) {
        /* packets handed back and not yet taken, or counters not yet collected: Python must see
         * them first */
        pthread_mutex_unlock(&self->lock);
        Py_RETURN_FALSE;
    }
    if (s->target != target) {
        slot_t *old = s->target >= 0 ? self->slots[s->target] : NULL;
        if (old != NULL)
            old->targeted--;
        t->targeted++;
        s->target = target;
    }
    s->audio_pt = audio_pt;
    s->latched = latched_addr;
    s->ssrc = ssrc;
    s->max_seq = max_seq & 0xFFFF;
    s->cycles = cycles;
    s->jitter = jitter;
    s->have_arrival = have_arrival;
    s->last_arrival = arrival;
    s->last_timestamp = last_ts;
    s->clock_rate = clock_rate;
    s->level_kind = level_kind;
    s->level_head = s->level_count = 0;
    s->dest = dest_addr;
    s->dest_len = dest_len;
    s->out_pt = out_pt & 0x7F;
    s->out_seq = out_seq & 0xFFFF;
    s->out_ssrc = out_ssrc;
    s->ts_offset = offset;
    s->marker_pending = marker;
    s->frame_ticks = frame_ticks;
    s->armed = 1;
    set_active(self, idx, s, 1);
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_TRUE;
}

/* What changed since the last collect, as a tuple (see server/media/crelay.py), or None. */
/* RFC 6464's level of a mean square relative to full scale, as media/levels.py's dbov(). */
static int dbov(double mean_square) {
    if (mean_square <= 0.0)
        return 127;
    double level = nearbyint(-10.0 * log10(mean_square)); /* half to even, as Python's round */
    return level < 0 ? 0 : level > 127 ? 127 : (int)level;
}

/* What changed since the last collect, as a tuple (see server/media/crelay.py), or None. The
 * audio levels kept since are in it only when asked for (`want_levels`): they wait otherwise. */
static PyObject *collect_locked(Engine *self, int idx, slot_t *s, int disarm, int want_levels) {
    if (disarm) {
        s->armed = 0;
        set_active(self, idx, s, 0);
        want_levels = 1;
    }
    int with_levels = want_levels && s->level_count;
    if (!s->dirty && !with_levels)
        Py_RETURN_NONE;
    PyObject *levels;
    if (with_levels) {
        levels = PyList_New(s->level_count);
        if (levels == NULL)
            return NULL;
        for (int i = 0; i < s->level_count; i++) {
            level_t *l = &s->levels[(s->level_head + i) % LEVELS_KEPT];
            PyList_SET_ITEM(levels, i, Py_BuildValue("(ii)", dbov(l->power / l->size), l->size));
        }
    } else {
        levels = Py_None;
        Py_INCREF(levels);
    }
    PyObject *arrival = s->have_arrival ? PyFloat_FromDouble(s->last_arrival) : Py_NewRef(Py_None);
    PyObject *out = Py_BuildValue(
        "(LLILdNIdLdNLIiLLLIdi)", s->d_packets, s->d_octets, s->max_seq, s->cycles, s->jitter,
        arrival, s->last_timestamp, s->d_sum, s->d_count, s->last_now, levels, s->truncated,
        s->out_seq, s->marker_pending, s->d_out_packets, s->d_out_octets, s->d_send_errors,
        s->last_stamp, s->last_stamp_at, s->sent);
    if (out == NULL)
        return NULL;
    s->d_packets = s->d_octets = s->d_count = s->truncated = 0;
    s->d_sum = 0.0;
    if (with_levels)
        s->level_head = s->level_count = 0;
    s->d_out_packets = s->d_out_octets = s->d_send_errors = 0;
    s->sent = 0;
    s->dirty = 0;
    return out;
}

static PyObject *collect_common(Engine *self, PyObject *args, int disarm) {
    int idx, want_levels = 1;
    if (!PyArg_ParseTuple(args, "i|p", &idx, &want_levels))
        return NULL;
    if (self->slots == NULL)
        Py_RETURN_NONE;
    lock_engine(self);
    slot_t *s = get_slot(self, idx);
    PyObject *out = s == NULL ? NULL : collect_locked(self, idx, s, disarm, want_levels);
    pthread_mutex_unlock(&self->lock);
    return out;
}

static PyObject *Engine_collect(Engine *self, PyObject *args) { return collect_common(self, args, 0); }

static PyObject *Engine_disarm(Engine *self, PyObject *args) { return collect_common(self, args, 1); }

static PyObject *Engine_state(Engine *self, PyObject *args) {
    int idx;
    if (!PyArg_ParseTuple(args, "i", &idx))
        return NULL;
    lock_engine(self);
    slot_t *s = get_slot(self, idx);
    int armed = s != NULL && s->armed, active = s != NULL && s->active;
    int queued = s != NULL ? s->queued : 0;
    pthread_mutex_unlock(&self->lock);
    if (s == NULL)
        return NULL;
    return Py_BuildValue("(iii)", armed, active, queued);
}

/* The datagrams handed back since the last call: [(slot, data, address, arrival time)]. The
 * entries are read without the lock (the thread only writes past them), so that the thread goes
 * on reading its sockets while Python makes its objects. */
static PyObject *Engine_take(Engine *self, PyObject *Py_UNUSED(ignored)) {
    uint64_t count;
    ssize_t r = read(self->notify_fd, &count, sizeof(count));
    (void)r;
    PyObject *out = PyList_New(0);
    if (out == NULL || self->slots == NULL)
        return out;
    lock_engine(self);
    int head = self->q_head, n = self->q_count;
    self->notified = 0;
    pthread_mutex_unlock(&self->lock);
    int failed = 0;
    for (int i = 0; i < n && !failed; i++) {
        entry_t *q = &self->queue[(head + i) % QUEUE_SIZE];
        slot_t *s = self->slots[q->slot]; /* slots change only here, on Python's side */
        if (s == NULL || s->gen != q->gen)
            continue;
        PyObject *item = Py_BuildValue("(iy#Nd)", q->slot, (const char *)q->data, (Py_ssize_t)q->len,
                                       addr_tuple(&q->addr), q->at);
        if (item == NULL || PyList_Append(out, item) < 0)
            failed = 1;
        Py_XDECREF(item);
    }
    lock_engine(self);
    for (int i = 0; i < n; i++) {
        entry_t *q = &self->queue[(head + i) % QUEUE_SIZE];
        slot_t *s = self->slots[q->slot];
        if (s != NULL && s->gen == q->gen)
            s->queued--;
    }
    self->q_head = (head + n) % QUEUE_SIZE;
    self->q_count -= n;
    for (int i = 0; i < self->n_paused; i++) { /* room again: read the waiting sockets */
        slot_t *s = self->slots[self->paused[i]];
        if (s != NULL && s->paused && s->active) {
            struct epoll_event ev = {.events = SOCKET_EVENTS,
                                     .data.u64 = ((uint64_t)s->gen << 32) | (uint32_t)self->paused[i]};
            epoll_ctl(self->epfd, EPOLL_CTL_MOD, s->fd, &ev);
            s->paused = 0;
        }
    }
    self->n_paused = 0;
    pthread_mutex_unlock(&self->lock);
    if (failed) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *Engine_notify_fd(Engine *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(self->notify_fd);
}

static PyObject *Engine_counters(Engine *self, PyObject *Py_UNUSED(ignored)) {
    lock_engine(self);
    PyObject *out = Py_BuildValue(
        "{sKsKsKsKsKsKsKsislsisKsisi}", "rounds", self->rounds, "forwarded", self->forwarded,
        "handed_back", self->handed_back, "queue_full", self->queue_full, "recv_calls",
        self->recv_calls, "send_calls", self->send_calls, "pauses", self->pauses, "queued",
        self->q_count, "gap_us", self->gap_ns / 1000, "uring", self->uring != NULL, "enters",
        self->enters, "uring_errno", self->uring_errno, "uring_failed", self->uring_failed);
    pthread_mutex_unlock(&self->lock);
    return out;
}

static PyObject *Engine_close(Engine *self, PyObject *Py_UNUSED(ignored)) {
    engine_stop(self);
    self->stop = 1;
    Py_RETURN_NONE;
}

static PyObject *Engine_now(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(ignored)) {
    return PyFloat_FromDouble(monotonic_now());
}

static PyMethodDef Engine_methods[] = {
    {"add", (PyCFunction)Engine_add, METH_VARARGS,
     "add(fd, family) -> slot: the engine reads this socket while the slot is armed"},
    {"remove", (PyCFunction)Engine_remove, METH_VARARGS, "remove(slot): stop reading its socket"},
    {"arm", (PyCFunction)Engine_arm, METH_VARARGS,
     "arm(slot, target, ...) -> bool: forward the slot's ordinary packets to the target's peer; "
     "False when handed-back packets or counters wait for Python"},
    {"disarm", (PyCFunction)Engine_disarm, METH_VARARGS,
     "disarm(slot) -> tuple | None: stop forwarding; what changed since the last collect"},
    {"collect", (PyCFunction)Engine_collect, METH_VARARGS,
     "collect(slot, levels=True) -> tuple | None: what changed since the last collect (the "
     "audio levels only when asked for); stays armed"},
    {"state", (PyCFunction)Engine_state, METH_VARARGS,
     "state(slot) -> (armed, read by the engine, datagrams handed back and not yet taken)"},
    {"take", (PyCFunction)Engine_take, METH_NOARGS,
     "take() -> [(slot, data, address, at)]: the datagrams handed back, oldest first"},
    {"notify_fd", (PyCFunction)Engine_notify_fd, METH_NOARGS,
     "the eventfd that is readable while datagrams wait in `take`"},
    {"counters", (PyCFunction)Engine_counters, METH_NOARGS, "the engine's own counters"},
    {"close", (PyCFunction)Engine_close, METH_NOARGS, "stop the thread"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sipbridge._crelay.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The compiled relay: one thread, epoll over the RTP sockets handed to it.",
    .tp_new = Engine_new,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
};

/* -- the tick's sender ------------------------------------------------------------------------ */
/* The datagrams of one tick of the shared 20 ms clock (server/media/ports.py SendBatch): one
 * frame for every leg of every mixing room, each from its leg's own socket. Python hands the
 * whole tick over in one call (`submit`: the datagrams copied, their addresses parsed), and a
 * thread of its own sends them with the GIL released, so the system calls - one sendto per leg,
 * as each leg has its own socket - run beside the event loop instead of inside it. A batch is
 * sent in the order given; the next `submit` waits for the previous batch (sent long before,
 * 20 ms later) and returns the indices of its datagrams whose send failed, so each socket
 * counts its own errors. `wait` returns once nothing is in flight: a socket about to close
 * waits, so that its descriptor is never sent on after it is closed (and maybe reused). */

typedef struct {
    int fd;
    int len;
    socklen_t alen;
    size_t offset;
    struct sockaddr_storage addr;
} out_t;

/* A leg's silence, made here (server/media/leg_driver.py CallMedia.send_pcm): while a leg of a
 * mixing room hears nothing and plays nothing, its frame of every tick is its silence payload
 * under the next header of its stream, which Python would make the same way (media/leg.py
 * `send_pcm(None)`, media/timeline.py `Timeline.made`, media/session.py `RtpSender.frame`). The
 * stream's state - sequence number, the timeline's last timestamp and its time, the marker
 * owed - lives here while the leg is armed; Python reads it back (`seq`, `last`, `last_at`,
 * `marker`, `packets`, `errors`) before anything else reads or moves the stream, and disarms
 * the leg (`close`) before it makes a frame itself. In a room of callers who send nothing that
 * is every frame: 2 us of the event loop's objects a frame in Python (issue 18). */
typedef struct {
    PyObject_HEAD
    int fd;
    int closed;
    socklen_t alen;
    struct sockaddr_storage addr;
    int plen;               /* the silence payload's length */
    unsigned char *payload; /* the silence payload */
    uint32_t ssrc;
    unsigned int seq; /* the next packet's sequence number */
    unsigned int last; /* the timeline's last timestamp */
    double last_at;    /* and when it was made */
    double clock_rate;
    unsigned int frame_ticks;
    int pt;
    int marker; /* the next packet carries the marker (RFC 3551 s4.1) */
    unsigned long long packets; /* made since the stream was armed */
    unsigned long long errors;  /* their sends that failed (known a batch later) */
} SilentStream;

static int SilentStream_init(SilentStream *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "family", "address", "payload", "ssrc", "seq", "last",
                             "last_at", "clock_rate", "frame_ticks", "pt", "marker", NULL};
    int fd, family, pt, marker;
    PyObject *address;
    Py_buffer payload;
    unsigned long ssrc, seq, last, frame_ticks;
    double last_at, clock_rate;
    if (self->payload != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiOy*kkkddkip", kwlist, &fd, &family, &address,
                                     &payload, &ssrc, &seq, &last, &last_at, &clock_rate,
                                     &frame_ticks, &pt, &marker))
        return -1;
    if (fd < 0 || payload.len <= 0 || payload.len > READ_SIZE - 12 || ssrc > 0xFFFFFFFFul ||
        seq > 0xFFFFul || last > 0xFFFFFFFFul || frame_ticks > 0xFFFFFFFFul || pt < 0 ||
        pt > 127 || !(clock_rate > 0) || !isfinite(last_at)) {
        PyBuffer_Release(&payload);
        PyErr_SetString(PyExc_ValueError, "a field of the stream is out of range");
        return -1;
    }
    if (parse_addr(address, family, &self->addr, &self->alen) < 0) {
        PyBuffer_Release(&payload);
        return -1;
    }
    self->payload = malloc((size_t)payload.len);
    if (self->payload == NULL) {
        PyBuffer_Release(&payload);
        PyErr_NoMemory();
        return -1;
    }
    memcpy(self->payload, payload.buf, (size_t)payload.len);
    self->plen = (int)payload.len;
    PyBuffer_Release(&payload);
    self->fd = fd;
    self->ssrc = (uint32_t)ssrc;
    self->seq = (unsigned int)seq;
    self->last = (unsigned int)last;
    self->last_at = last_at;
    self->clock_rate = clock_rate;
    self->frame_ticks = (unsigned int)frame_ticks;
    self->pt = pt;
    self->marker = marker;
    return 0;
}

static void SilentStream_dealloc(SilentStream *self) {
    free(self->payload);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *SilentStream_close(SilentStream *self, PyObject *Py_UNUSED(ignored)) {
    self->closed = 1;
    Py_RETURN_NONE;
}

/* media/timeline.py round_half_even: the nearest integer, a tie to the even one, as the Python
 * function computes it on the same double (exact below 2**52). */
static long long round_half_even(double value) {
    long long whole = (long long)value;
    if ((double)whole > value)
        whole -= 1;
    double rest = value - (double)whole;
    if (rest > 0.5 || (rest == 0.5 && whole % 2 != 0))
        whole += 1;
    return whole;
}

/* The stream's next frame at `at` into `out` (12 + plen bytes): `Timeline.made` and
 * `RtpSender.frame` of media/, for a stream that has made a frame before. */
static int silent_frame(SilentStream *st, double at, unsigned char *out) {
    double value = (at - st->last_at) * st->clock_rate;
    unsigned long long step = st->frame_ticks;
    if (value > 9.0e15 || value < -9.0e15 || value != value)
        return -1; /* (a clock no stream has: Python's path decides) */
    long long elapsed = round_half_even(value);
    if (elapsed > (long long)step)
        step = (unsigned long long)elapsed;
    unsigned int stamp = (unsigned int)(((unsigned long long)st->last + step) & 0xFFFFFFFFull);
    out[0] = 0x80;
    out[1] = (unsigned char)(st->pt | (st->marker ? 0x80 : 0));
    out[2] = (unsigned char)(st->seq >> 8);
    out[3] = (unsigned char)st->seq;
    out[4] = (unsigned char)(stamp >> 24);
    out[5] = (unsigned char)(stamp >> 16);
    out[6] = (unsigned char)(stamp >> 8);
    out[7] = (unsigned char)stamp;
    out[8] = (unsigned char)(st->ssrc >> 24);
    out[9] = (unsigned char)(st->ssrc >> 16);
    out[10] = (unsigned char)(st->ssrc >> 8);
    out[11] = (unsigned char)st->ssrc;
    memcpy(out + 12, st->payload, (size_t)st->plen);
    st->seq = (st->seq + 1) & 0xFFFFu;
    st->last = stamp;
    st->last_at = at;
    st->marker = 0;
    st->packets++;
    return 0;
}

static PyMemberDef SilentStream_members[] = {
    {"seq", T_UINT, offsetof(SilentStream, seq), READONLY, "the next packet's sequence number"},
    {"last", T_UINT, offsetof(SilentStream, last), READONLY, "the last timestamp made"},
    {"last_at", T_DOUBLE, offsetof(SilentStream, last_at), READONLY, "when it was made"},
    {"marker", T_INT, offsetof(SilentStream, marker), READONLY, "the marker still owed"},
    {"packets", T_ULONGLONG, offsetof(SilentStream, packets), READONLY, "frames made"},
    {"errors", T_ULONGLONG, offsetof(SilentStream, errors), READONLY, "failed sends"},
    {"closed", T_INT, offsetof(SilentStream, closed), READONLY, "disarmed"},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef SilentStream_methods[] = {
    {"close", (PyCFunction)SilentStream_close, METH_NOARGS, "make no more frames"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SilentStreamType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sipbridge._crelay.SilentStream",
    .tp_basicsize = sizeof(SilentStream),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A leg's silence frames, made by the tick's sender (Sender.submit).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SilentStream_init,
    .tp_dealloc = (destructor)SilentStream_dealloc,
    .tp_members = SilentStream_members,
    .tp_methods = SilentStream_methods,
};

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t thread;
    int running;
    int stop;
    int busy; /* a batch handed over and not yet sent */
    out_t *items;
    int count, cap;
    unsigned char *arena;
    size_t arena_cap;
    int *failed;
    int n_failed;
    unsigned long long batches, sent, errors;
    /* Each socket's last destination, parsed: a leg sends to the same address object (its
     * latch's) tick after tick, so it is parsed once (a reference held, so that the object
     * compared against cannot be another one at the same place). Indexed by descriptor. */
    PyObject **dest_obj;
    int *dest_family;
    struct sockaddr_storage *dest_addr;
    socklen_t *dest_len;
    /* The batch in flight's silent frames (after its `py_count` datagrams of Python's): their
     * streams, held until the next `submit` counts their failed sends on them. */
    int py_count;
    int n_streams;
    SilentStream **streams;
} Sender;

#define SENDER_FDS 65536

static void *sender_thread(void *arg) {
    Sender *s = (Sender *)arg;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->busy && !s->stop)
            pthread_cond_wait(&s->cond, &s->lock);
        if (s->stop && !s->busy)
            break;
        int count = s->count;
        pthread_mutex_unlock(&s->lock);
        /* the items and arena are Python's again only once busy is cleared */
        int n_failed = 0;
        unsigned long long errors = 0;
        for (int i = 0; i < count; i++) {
            out_t *o = &s->items[i];
            ssize_t r;
            do {
                r = sendto(o->fd, s->arena + o->offset, (size_t)o->len, MSG_DONTWAIT,
                           (struct sockaddr *)&o->addr, o->alen);
            } while (r < 0 && errno == EINTR);
            if (r < 0) { /* a full socket buffer or an unreachable peer: dropped, never blocks */
                s->failed[n_failed++] = i;
                errors++;
            }
        }
        pthread_mutex_lock(&s->lock);
        s->n_failed = n_failed;
        s->batches++;
        s->sent += (unsigned long long)count - errors;
        s->errors += errors;
        s->busy = 0;
        pthread_cond_broadcast(&s->cond);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* Until the batch in flight is sent; the lock is held on return. */
static void sender_settle_locked(Sender *s) {
    if (pthread_mutex_trylock(&s->lock) != 0) {
        Py_BEGIN_ALLOW_THREADS pthread_mutex_lock(&s->lock);
        Py_END_ALLOW_THREADS
    }
    if (s->busy) {
        Py_BEGIN_ALLOW_THREADS while (s->busy) pthread_cond_wait(&s->cond, &s->lock);
        Py_END_ALLOW_THREADS
    }
}

static int Sender_init(Sender *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist))
        return -1;
    if (self->items != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "already initialised");
        return -1;
    }
    self->cap = 256;
    self->arena_cap = 256 * 256;
    self->items = malloc(sizeof(out_t) * (size_t)self->cap);
    self->failed = malloc(sizeof(int) * (size_t)self->cap);
    self->streams = calloc((size_t)self->cap, sizeof(SilentStream *));
    self->arena = malloc(self->arena_cap);
    self->dest_obj = calloc(SENDER_FDS, sizeof(PyObject *));
    self->dest_family = calloc(SENDER_FDS, sizeof(int));
    self->dest_addr = calloc(SENDER_FDS, sizeof(struct sockaddr_storage));
    self->dest_len = calloc(SENDER_FDS, sizeof(socklen_t));
    if (!self->items || !self->failed || !self->streams || !self->arena || !self->dest_obj ||
        !self->dest_family ||
        !self->dest_addr || !self->dest_len) {
        PyErr_NoMemory();
        return -1;
    }
    pthread_mutex_init(&self->lock, NULL);
    pthread_cond_init(&self->cond, NULL);
    return 0;
}

static void sender_stop(Sender *self) {
    if (!self->running)
        return;
    sender_settle_locked(self);
    self->stop = 1;
    pthread_cond_broadcast(&self->cond);
    pthread_mutex_unlock(&self->lock);
    Py_BEGIN_ALLOW_THREADS pthread_join(self->thread, NULL);
    Py_END_ALLOW_THREADS self->running = 0;
}

static void Sender_dealloc(Sender *self) {
    sender_stop(self);
    free(self->items);
    free(self->failed);
    free(self->arena);
    if (self->dest_obj != NULL)
        for (int i = 0; i < SENDER_FDS; i++)
            Py_XDECREF(self->dest_obj[i]);
    free(self->dest_obj);
    for (int i = 0; i < self->n_streams; i++)
        Py_XDECREF((PyObject *)self->streams[i]);
    free(self->streams);
    free(self->dest_family);
    free(self->dest_addr);
    free(self->dest_len);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Sender_submit(Sender *self, PyObject *args) {
    PyObject *batch, *silent = NULL;
    double at = 0.0;
    if (!PyArg_ParseTuple(args, "O|Od", &batch, &silent, &at))
        return NULL;
    if (self->items == NULL || self->stop) {
        PyErr_SetString(PyExc_RuntimeError, "the sender is closed");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(batch, "submit() takes a list");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_ssize_t n_silent = 0;
    if (silent != NULL && silent != Py_None) {
        if (!PyList_Check(silent)) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_TypeError, "the silent streams are a list");
            return NULL;
        }
        n_silent = PyList_GET_SIZE(silent);
        for (Py_ssize_t i = 0; i < n_silent; i++)
            if (Py_TYPE(PyList_GET_ITEM(silent, i)) != &SilentStreamType) {
                Py_DECREF(seq);
                PyErr_SetString(PyExc_TypeError, "a silent stream is a SilentStream");
                return NULL;
            }
    }
    if (n > 1000000 || n_silent > 1000000) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "batch too large");
        return NULL;
    }
    sender_settle_locked(self); /* the previous batch is sent: its buffers are ours */
    /* its failed sends: Python's datagrams by index, the silent frames on their streams */
    int n_py_failed = 0;
    for (int i = 0; i < self->n_failed; i++)
        if (self->failed[i] < self->py_count)
            n_py_failed++;
    PyObject *failed = PyList_New(n_py_failed);
    if (failed == NULL)
        goto error;
    for (int i = 0, k = 0; i < self->n_failed; i++) {
        int index = self->failed[i];
        if (index < self->py_count)
            PyList_SET_ITEM(failed, k++, PyLong_FromLong(index));
        else if (index - self->py_count < self->n_streams)
            self->streams[index - self->py_count]->errors++;
    }
    for (int i = 0; i < self->n_streams; i++)
        Py_CLEAR(self->streams[i]);
    self->n_streams = 0;
    self->py_count = 0;
    self->n_failed = 0;
    self->count = 0;
    if (n + n_silent > self->cap) {
        int cap = (int)(n + n_silent);
        out_t *items = realloc(self->items, sizeof(out_t) * (size_t)cap);
        if (items != NULL)
            self->items = items;
        int *f = realloc(self->failed, sizeof(int) * (size_t)cap);
        if (f != NULL)
            self->failed = f;
        SilentStream **streams = realloc(self->streams, sizeof(SilentStream *) * (size_t)cap);
        if (streams != NULL)
            self->streams = streams;
        if (items == NULL || f == NULL || streams == NULL) {
            PyErr_NoMemory();
            goto error;
        }
        self->cap = cap;
    }
    size_t used = 0;
    PyObject **entries = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *entry = entries[i];
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) < 4) {
            PyErr_SetString(PyExc_TypeError, "an entry is (fd, family, data, address[, any])");
            goto error;
        }
        long fd = PyLong_AsLong(PyTuple_GET_ITEM(entry, 0));
        long family = PyLong_AsLong(PyTuple_GET_ITEM(entry, 1));
        if ((fd == -1 || family == -1) && PyErr_Occurred())
            goto error;
        if (fd < 0 || fd > INT_MAX) {
            PyErr_SetString(PyExc_ValueError, "not a descriptor");
            goto error;
        }
        Py_buffer data;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(entry, 2), &data, PyBUF_SIMPLE) < 0)
            goto error;
        PyObject *addr = PyTuple_GET_ITEM(entry, 3);
        if (data.len <= 0 || data.len > READ_SIZE) {
            PyBuffer_Release(&data);
            PyErr_SetString(PyExc_ValueError, "a datagram is 1 to 2048 bytes");
            goto error;
        }
        if (used + (size_t)data.len > self->arena_cap) {
            size_t cap = self->arena_cap * 2 + (size_t)data.len;
            unsigned char *arena = realloc(self->arena, cap);
            if (arena == NULL) {
                PyBuffer_Release(&data);
                PyErr_NoMemory();
                goto error;
            }
            self->arena = arena;
            self->arena_cap = cap;
        }
        out_t *o = &self->items[self->count];
        if (fd < SENDER_FDS && self->dest_obj[fd] == addr && self->dest_family[fd] == family) {
            o->addr = self->dest_addr[fd];
            o->alen = self->dest_len[fd];
        } else {
            if (parse_addr(addr, (int)family, &o->addr, &o->alen) < 0) {
                PyBuffer_Release(&data);
                goto error;
            }
            if (fd < SENDER_FDS) {
                Py_INCREF(addr);
                Py_XSETREF(self->dest_obj[fd], addr);
                self->dest_family[fd] = (int)family;
                self->dest_addr[fd] = o->addr;
                self->dest_len[fd] = o->alen;
            }
        }
        memcpy(self->arena + used, data.buf, (size_t)data.len);
        o->fd = (int)fd;
        o->len = (int)data.len;
        o->offset = used;
        used += (size_t)data.len;
        PyBuffer_Release(&data);
        self->count++;
    }
    Py_DECREF(seq);
    seq = NULL;
    self->py_count = self->count;
    /* room for every silent frame first: a stream moves on only once its frame will be sent */
    size_t needed = used;
    for (Py_ssize_t i = 0; i < n_silent; i++)
        needed += 12 + (size_t)((SilentStream *)PyList_GET_ITEM(silent, i))->plen;
    if (needed > self->arena_cap) {
        size_t cap = self->arena_cap * 2 > needed ? self->arena_cap * 2 : needed;
        unsigned char *arena = realloc(self->arena, cap);
        if (arena == NULL) {
            PyErr_NoMemory();
            goto error;
        }
        self->arena = arena;
        self->arena_cap = cap;
    }
    for (Py_ssize_t i = 0; i < n_silent; i++) {
        SilentStream *st = (SilentStream *)PyList_GET_ITEM(silent, i);
        if (st->closed)
            continue;
        size_t len = 12 + (size_t)st->plen;
        if (silent_frame(st, at, self->arena + used) < 0)
            continue;
        out_t *o = &self->items[self->count];
        o->fd = st->fd;
        o->len = (int)len;
        o->offset = used;
        o->addr = st->addr;
        o->alen = st->alen;
        used += len;
        Py_INCREF(st);
        self->streams[self->n_streams++] = st;
        self->count++;
    }
    if (self->count > 0) {
        if (!self->running) {
            if (pthread_create(&self->thread, NULL, sender_thread, self) != 0) {
                self->count = 0;
                pthread_mutex_unlock(&self->lock);
                Py_DECREF(failed);
                PyErr_SetString(PyExc_OSError, "cannot start the sender thread");
                return NULL;
            }
            self->running = 1;
        }
        self->busy = 1;
        pthread_cond_signal(&self->cond);
    }
    pthread_mutex_unlock(&self->lock);
    return failed;
error:
    /* nothing of this batch is sent (no silent frame was made: they come last) */
    self->count = 0;
    self->py_count = 0;
    pthread_mutex_unlock(&self->lock);
    Py_XDECREF(seq);
    Py_XDECREF(failed);
    return NULL;
}

static PyObject *Sender_wait(Sender *self, PyObject *Py_UNUSED(ignored)) {
    if (self->items == NULL)
        Py_RETURN_NONE;
    sender_settle_locked(self);
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static PyObject *Sender_close(Sender *self, PyObject *Py_UNUSED(ignored)) {
    sender_stop(self);
    self->stop = 1;
    Py_RETURN_NONE;
}

static PyObject *Sender_counters(Sender *self, PyObject *Py_UNUSED(ignored)) {
    if (self->items == NULL)
        return Py_BuildValue("{sKsKsK}", "batches", 0ULL, "sent", 0ULL, "errors", 0ULL);
    sender_settle_locked(self);
    PyObject *out = Py_BuildValue("{sKsKsK}", "batches", self->batches, "sent", self->sent,
                                  "errors", self->errors);
    pthread_mutex_unlock(&self->lock);
    return out;
}

static PyMethodDef Sender_methods[] = {
    {"submit", (PyCFunction)Sender_submit, METH_VARARGS,
     "submit([(fd, family, data, address[, any]), ...][, [SilentStream, ...], at]) -> [index]: "
     "send these datagrams in order on the sender's thread, then each stream's next silent "
     "frame made at `at`; the indices of the previous batch's failed sends of the first kind "
     "(those of the second are counted on their streams)"},
    {"wait", (PyCFunction)Sender_wait, METH_NOARGS, "until the batch in flight is sent"},
    {"counters", (PyCFunction)Sender_counters, METH_NOARGS, "batches, datagrams sent, errors"},
    {"close", (PyCFunction)Sender_close, METH_NOARGS, "send what is in flight, stop the thread"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SenderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sipbridge._crelay.Sender",
    .tp_basicsize = sizeof(Sender),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The sends of one tick of the media clock, made on a thread of their own.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Sender_init,
    .tp_dealloc = (destructor)Sender_dealloc,
    .tp_methods = Sender_methods,
};

static PyMethodDef module_methods[] = {
    {"now", Engine_now, METH_NOARGS, "the engine's clock (CLOCK_MONOTONIC, as time.monotonic)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef crelay_module = {
    PyModuleDef_HEAD_INIT, "_crelay", "The relay's hot path in a thread (server/media/crelay.py).",
    -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__crelay(void) {
    if (PyType_Ready(&EngineType) < 0 || PyType_Ready(&SenderType) < 0 ||
        PyType_Ready(&SilentStreamType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&crelay_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) {
        Py_DECREF(&EngineType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&SenderType);
    if (PyModule_AddObject(m, "Sender", (PyObject *)&SenderType) < 0) {
        Py_DECREF(&SenderType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&SilentStreamType);
    if (PyModule_AddObject(m, "SilentStream", (PyObject *)&SilentStreamType) < 0) {
        Py_DECREF(&SilentStreamType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
