/* bench/media.py's RTP generator loop in C: N phones' 20 ms PCMU streams sent on a shared
 * schedule and received with the kernel's timestamps, on one epoll loop.
 *
 * The Python generator (bench/media.py, `--engine python`) does the same per packet in the
 * interpreter; at 800 relayed calls (1,600 streams, 80,000 datagrams a second each way) it used
 * a whole core and fell behind its own schedule, so the server's added latency could not be
 * judged there. This file is the load generator only: it is not part of sipbridge. It is built by
 * bench/rtpgen.py with the system compiler (cc -O2 -shared) and driven through ctypes; SIP stays
 * in Python, which gets control back whenever the SIP socket is readable or its timers are due.
 *
 * Packet and figures are the Python engine's, field for field (bench/media.py's docstring):
 * RTP header, then the send time (CLOCK_REALTIME ns, taken just before sendto), the sending
 * phone's index and a packet counter, then mu-law silence (0xff) to 160 payload bytes. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PCMU_PT 0
#define FRAME_NS 20000000LL
#define SAMPLES 160
#define RTP_HEADER 12
#define PACKET_LEN (RTP_HEADER + SAMPLES)
#define STAMP_LEN 16 /* send time (8), index (4), counter (4) */
#define BATCH 16     /* datagrams per recvmmsg */
#define DRAIN_LIMIT 64
#define EVENTS 256
#define SIP_KEY 0xFFFFFFFFu
#define RTCP_FLAG 0x80000000u
#define MAX_SAMPLES 10

enum { S_LATENCY, S_RECV_JITTER, S_SEND_JITTER, S_LATENESS, N_SERIES };
enum {
    C_WINDOW_SENT,
    C_WINDOW_RECEIVED,
    C_DUPLICATES,
    C_REORDERED,
    C_STRAY,
    C_MISROUTED,
    C_SERVER_SILENCE,
    C_SEND_ERRORS,
    C_RECV_ERRORS,
    N_COUNTERS
};
/* per phone, read back by Python at the end */
enum { P_SENT, P_RECEIVED, P_SEQ_GAPS, P_RTCP_IN, N_PER_CALL };

typedef struct {
    int64_t *v;
    size_t len, cap;
} series;

typedef struct {
    int fd, rtcp_fd, partner, active;
    struct sockaddr_in remote;
    uint32_t ssrc, ts, counter;
    uint16_t seq;
    uint8_t marker;
    int32_t last_seq;
    int64_t last_send_ns, last_recv_counter, last_recv_arrival, answered_mono;
    int64_t figures[N_PER_CALL];
} phone;

typedef struct {
    int n, slots, slot, streaming, epfd;
    int64_t slot_ns, next_slot_at, win_start, win_end;
    phone *phones;
    series s[N_SERIES];
    int64_t counters[N_COUNTERS];
    /* misrouted samples: to, from, counter, seq, ns after the receiver's answer */
    int64_t samples[MAX_SAMPLES][5];
    int n_samples;
} gen;

static int64_t clock_ns(clockid_t id) {
    struct timespec t;
    clock_gettime(id, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void push(series *s, int64_t value) {
    if (s->len == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 65536;
        int64_t *v = realloc(s->v, cap * sizeof(int64_t));
        if (v == NULL)
            return; /* out of memory: the figure loses a sample, the run goes on */
        s->v = v;
        s->cap = cap;
    }
    s->v[s->len++] = value;
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t get64(const uint8_t *p) {
    return (int64_t)((uint64_t)get32(p) << 32 | get32(p + 4));
}

gen *gen_new(int n, int slots, int64_t slot_ns) {
    if (n <= 0 || slots <= 0 || slot_ns <= 0)
        return NULL;
    gen *g = calloc(1, sizeof(gen));
    if (g == NULL)
        return NULL;
    g->phones = calloc((size_t)n, sizeof(phone));
    g->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (g->phones == NULL || g->epfd < 0) {
        free(g->phones);
        free(g);
        return NULL;
    }
    g->n = n;
    g->slots = slots;
    g->slot_ns = slot_ns;
    g->streaming = 1;
    g->win_start = g->win_end = (int64_t)1 << 62;
    return g;
}

void gen_free(gen *g) {
    if (g == NULL)
        return;
    for (int i = 0; i < N_SERIES; i++)
        free(g->s[i].v);
    close(g->epfd);
    free(g->phones);
    free(g);
}

static int watch(gen *g, int fd, uint32_t key) {
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = key};
    return epoll_ctl(g->epfd, EPOLL_CTL_ADD, fd, &ev);
}

/* A phone: its RTP and RTCP sockets (non-blocking, SO_TIMESTAMPNS on), its partner's index and
 * its stream's random start (SSRC, sequence, timestamp). */
int gen_phone(gen *g, int idx, int fd, int rtcp_fd, int partner, uint32_t ssrc, uint16_t seq,
              uint32_t ts) {
    if (idx < 0 || idx >= g->n)
        return -1;
    phone *p = &g->phones[idx];
    p->fd = fd;
    p->rtcp_fd = rtcp_fd;
    p->partner = partner;
    p->ssrc = ssrc;
    p->seq = seq;
    p->ts = ts;
    p->marker = 0x80;
    p->last_seq = -1;
    p->last_recv_counter = -1;
    if (watch(g, fd, (uint32_t)idx) < 0 || watch(g, rtcp_fd, (uint32_t)idx | RTCP_FLAG) < 0)
        return -1;
    return 0;
}

int gen_watch_sip(gen *g, int fd) { return watch(g, fd, SIP_KEY); }

/* Start (or move) a phone's stream to an IPv4 address (network order) and port. */
int gen_stream(gen *g, int idx, uint32_t addr_be, uint16_t port, int64_t answered_mono) {
    if (idx < 0 || idx >= g->n)
        return -1;
    phone *p = &g->phones[idx];
    memset(&p->remote, 0, sizeof(p->remote));
    p->remote.sin_family = AF_INET;
    p->remote.sin_addr.s_addr = addr_be;
    p->remote.sin_port = htons(port);
    p->answered_mono = answered_mono;
    p->active = 1;
    return 0;
}

void gen_unstream(gen *g, int idx) {
    if (idx >= 0 && idx < g->n)
        g->phones[idx].active = 0;
}

void gen_set_window(gen *g, int64_t start, int64_t end) {
    g->win_start = start;
    g->win_end = end;
}

void gen_set_streaming(gen *g, int on) { g->streaming = on; }

void gen_start_schedule(gen *g, int64_t first_mono) { g->next_slot_at = first_mono; }

int64_t gen_counter(gen *g, int which) {
    return which >= 0 && which < N_COUNTERS ? g->counters[which] : -1;
}

int64_t gen_phone_figure(gen *g, int idx, int which) {
    if (idx < 0 || idx >= g->n || which < 0 || which >= N_PER_CALL)
        return -1;
    return g->phones[idx].figures[which];
}

/* A series' length, and its values copied into `out` (up to `cap`). */
size_t gen_series(gen *g, int which, int64_t *out, size_t cap) {
    if (which < 0 || which >= N_SERIES)
        return 0;
    series *s = &g->s[which];
    if (out != NULL)
        memcpy(out, s->v, (s->len < cap ? s->len : cap) * sizeof(int64_t));
    return s->len;
}

int gen_samples(gen *g, int64_t *out) {
    memcpy(out, g->samples, sizeof(g->samples));
    return g->n_samples;
}

static void send_slot(gen *g, int64_t now_mono) {
    int64_t slot_at = g->next_slot_at;
    g->next_slot_at += g->slot_ns;
    int slot = g->slot;
    g->slot = (g->slot + 1) % g->slots;
    if (!g->streaming)
        return;
    uint8_t pkt[PACKET_LEN];
    memset(pkt + RTP_HEADER + STAMP_LEN, 0xff, SAMPLES - STAMP_LEN);
    int measuring = 0;
    for (int i = slot; i < g->n; i += g->slots) {
        phone *p = &g->phones[i];
        if (!p->active)
            continue;
        pkt[0] = 0x80;
        pkt[1] = PCMU_PT | p->marker;
        pkt[2] = p->seq >> 8;
        pkt[3] = p->seq & 0xff;
        put32(pkt + 4, p->ts);
        put32(pkt + 8, p->ssrc);
        int64_t sent_at = clock_ns(CLOCK_REALTIME);
        put32(pkt + 12, (uint32_t)((uint64_t)sent_at >> 32));
        put32(pkt + 16, (uint32_t)sent_at);
        put32(pkt + 20, (uint32_t)i);
        put32(pkt + 24, p->counter);
        p->marker = 0;
        p->seq++;
        p->ts += SAMPLES;
        p->counter++;
        if (sendto(p->fd, pkt, PACKET_LEN, 0, (struct sockaddr *)&p->remote, sizeof(p->remote)) <
            0) {
            g->counters[C_SEND_ERRORS]++;
            continue;
        }
        if (g->win_start <= sent_at && sent_at < g->win_end) {
            measuring = 1;
            p->figures[P_SENT]++;
            g->counters[C_WINDOW_SENT]++;
            if (p->last_send_ns)
                push(&g->s[S_SEND_JITTER], llabs(sent_at - p->last_send_ns - FRAME_NS));
        }
        p->last_send_ns = sent_at;
    }
    if (measuring)
        push(&g->s[S_LATENESS], now_mono > slot_at ? now_mono - slot_at : 0);
}

static int is_silence(const uint8_t *payload, size_t len) {
    if (len != SAMPLES)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (payload[i] != 0xff)
            return 0;
    return 1;
}

static void on_packet(gen *g, phone *p, int idx, const uint8_t *d, size_t len, int64_t arrival) {
    if (len < RTP_HEADER + STAMP_LEN || (d[1] & 0x7f) != PCMU_PT) {
        g->counters[C_STRAY]++;
        return;
    }
    int64_t sent_at = get64(d + RTP_HEADER);
    int64_t src = get32(d + RTP_HEADER + 8);
    int64_t counter = get32(d + RTP_HEADER + 12);
    uint16_t seq = (uint16_t)(d[2] << 8 | d[3]);
    if (src != p->partner) {
        if (sent_at == -1 && is_silence(d + RTP_HEADER, len - RTP_HEADER)) {
            g->counters[C_SERVER_SILENCE]++; /* the server's own frame: a leg alone */
            return;
        }
        g->counters[C_MISROUTED]++;
        if (g->n_samples < MAX_SAMPLES) {
            int64_t *s = g->samples[g->n_samples++];
            s[0] = idx;
            s[1] = src;
            s[2] = counter;
            s[3] = seq;
            s[4] = clock_ns(CLOCK_MONOTONIC) - p->answered_mono;
        }
        return;
    }
    if (p->last_seq >= 0) {
        int gap = (seq - p->last_seq - 1) & 0xffff;
        if (gap < 0x8000) {
            p->figures[P_SEQ_GAPS] += gap;
            p->last_seq = seq;
        }
    } else {
        p->last_seq = seq;
    }
    int64_t last = p->last_recv_counter;
    if (counter == last) {
        g->counters[C_DUPLICATES]++;
        return;
    }
    int in_window = g->win_start <= sent_at && sent_at < g->win_end;
    if (counter < last) {
        g->counters[C_REORDERED]++;
        if (in_window) {
            p->figures[P_RECEIVED]++;
            g->counters[C_WINDOW_RECEIVED]++;
            push(&g->s[S_LATENCY], arrival - sent_at);
        }
        return;
    }
    if (in_window) {
        p->figures[P_RECEIVED]++;
        g->counters[C_WINDOW_RECEIVED]++;
        push(&g->s[S_LATENCY], arrival - sent_at);
        if (counter == last + 1)
            push(&g->s[S_RECV_JITTER], llabs(arrival - p->last_recv_arrival - FRAME_NS));
    }
    p->last_recv_counter = counter;
    p->last_recv_arrival = arrival;
}

static void read_rtp(gen *g, int idx) {
    phone *p = &g->phones[idx];
    uint8_t bufs[BATCH][2048];
    char ctrl[BATCH][CMSG_SPACE(sizeof(struct timespec))];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    for (int round = 0; round < DRAIN_LIMIT / BATCH; round++) {
        memset(msgs, 0, sizeof(msgs));
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = sizeof(bufs[i]);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = ctrl[i];
            msgs[i].msg_hdr.msg_controllen = sizeof(ctrl[i]);
        }
        int got = recvmmsg(p->fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                g->counters[C_RECV_ERRORS]++; /* ICMP unreachable for an earlier send */
            return;
        }
        for (int i = 0; i < got; i++) {
            int64_t arrival = 0;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c != NULL;
                 c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)) {
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                    struct timespec t;
                    memcpy(&t, CMSG_DATA(c), sizeof(t));
                    arrival = (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
                }
            }
            if (arrival == 0)
                arrival = clock_ns(CLOCK_REALTIME);
            on_packet(g, p, idx, bufs[i], msgs[i].msg_len, arrival);
        }
        if (got < BATCH)
            return;
    }
}

static void read_rtcp(gen *g, int idx) {
    uint8_t buf[2048];
    for (int i = 0; i < DRAIN_LIMIT; i++) {
        if (recv(g->phones[idx].rtcp_fd, buf, sizeof(buf), MSG_DONTWAIT) < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return;
            continue;
        }
        g->phones[idx].figures[P_RTCP_IN]++;
    }
}

/* Send what is due and receive until `until` (CLOCK_MONOTONIC ns). Returns 1 as soon as the SIP
 * socket is readable (Python reads it and calls again), 0 at `until`. Bounded in turns. */
int gen_run(gen *g, int64_t until) {
    struct epoll_event events[EVENTS];
    for (long turn = 0; turn < 1000000; turn++) {
        int64_t now = clock_ns(CLOCK_MONOTONIC);
        if (now >= until)
            return 0;
        int late = 0;
        while (g->next_slot_at <= now && late < 4 * g->slots) {
            send_slot(g, now);
            late++;
        }
        if (late >= 4 * g->slots) /* far behind (stalled): resume the schedule from now */
            g->next_slot_at = now + g->slot_ns;
        int64_t wake = g->next_slot_at < until ? g->next_slot_at : until;
        int64_t wait = wake - clock_ns(CLOCK_MONOTONIC);
        struct timespec timeout = {0, 0};
        if (wait > 0) {
            timeout.tv_sec = wait / 1000000000LL;
            timeout.tv_nsec = wait % 1000000000LL;
        }
        int got = epoll_pwait2(g->epfd, events, EVENTS, &timeout, NULL);
        if (got < 0 && errno == ENOSYS) { /* a kernel before 5.11: whole milliseconds */
            got = epoll_wait(g->epfd, events, EVENTS, (int)(wait > 0 ? wait / 1000000 : 0));
        }
        int sip = 0;
        for (int i = 0; i < got; i++) {
            uint32_t key = events[i].data.u32;
            if (key == SIP_KEY)
                sip = 1;
            else if (key & RTCP_FLAG)
                read_rtcp(g, (int)(key & ~RTCP_FLAG));
            else
                read_rtp(g, (int)key);
        }
        if (sip)
            return 1;
    }
    return 0;
}
