/* The SIP UDP socket read on a thread of its own, and a new INVITE's 100 Trying sent there
 * (driven by server/sip/udp_thread.py).
 *
 * A POSIX thread that never takes the GIL blocks in poll() on the socket, reads what is there
 * with recvmmsg, and appends each datagram to a bounded queue (a full queue drops and counts,
 * as a full kernel buffer would). INVITEs fill only half of it: the other half is kept for what
 * completes calls already under way (ACK, BYE, CANCEL, responses), so that a burst of new calls
 * the loop cannot take at once costs retransmitted INVITEs, not established calls (shed new
 * work first, RFC 6357 s5). Those this thread answers 100 (from sources the admission control
 * let through) may also use an eighth kept for them: a flood from new sources, of REGISTERs
 * or of garbage, that fills the queue does not drop them with it. When the queue was left
 * empty by the event loop, the thread writes an eventfd the loop watches (`add_reader`): one
 * wake a batch, not a datagram. The loop takes up to `max` datagrams a call (`drain`) and
 * hands each to the SIP stack as before.
 *
 * A datagram that is a plain INVITE outside a dialog (no To tag), whose top Via branch this
 * thread has not seen within LINGER seconds, from a source the SIP stack's admission control has
 * let through (`admit`), is answered 100 Trying from here at once (RFC 3261 s8.2.6.1, s17.2.1),
 * byte for byte the 100 the Python stack makes (`build_trying`, and `trying()` for its tests),
 * and marked so that the transaction layer knows its 100 went out. Anything unusual (folded or
 * compact-form-less oddities, a comma in the top Via, non-ASCII, a Timestamp or Require header,
 * a To that mentions a tag, an RFC 2543 branch...) is left to Python, which decides as it
 * always did. A source is answered here only within what the admission control has told this
 * thread it will judge before it could drop one of its requests (`admit`, `consider`): no INVITE
 * it drops unanswered gets a 100 from here.
 *
 * Every branch of an INVITE read is remembered (a bounded open-addressing table of 64-bit
 * hashes keyed with a random key per reader, refreshed on each sighting): a retransmission is
 * never answered here, whatever the transaction has sent since; nor is an INVITE whose merge key
 * (Call-ID, From tag, CSeq) was read on another branch (the endpoint's 482, s8.2.2.2, goes
 * alone), remembered in the same table; a probe window too full to remember one evicts the
 * one expiring first (`seen_mark`), never stops the answers.
 * Sources have a bounded table too (`source_find`, keyed the same): a slot is made only for a
 * request this thread would answer, in place of one with nothing waiting when full: one not
 * admitted first, then the one answered least lately (`answered`, aged), then the least
 * recently seen, so that more sources than slots (a spoofed flood) push out one another before
 * a caller whose calls this thread answers (tests/server/test_sip_thread_sources.py).
 *
 * Started with `answer` false (an application that answers its INVITEs within their handling,
 * as tests/sip_app.py's does), the thread sends no 100 at all: the loop makes each, lazily
 * (only for an INVITE its handling left unanswered), and the thread only reads and sends.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "_pyaddr.h"

#define BATCH 32
#define READ_SIZE 65535
#define QUEUE_MAX 4096                  /* datagrams waiting for the loop */
#define QUEUE_BYTES (8 * 1024 * 1024)   /* and their bytes */
#define SEEN_SLOTS (1u << 18)           /* branches and merge keys remembered (64-bit hashes) */
#define SEEN_PROBE 32                   /* slots looked at for one branch (full: one evicted) */
#define LINGER 64.0                     /* seconds a branch is remembered after its last sighting */
#define SOURCE_SLOTS 4096               /* sources known here */
#define SOURCE_PROBE 16                 /* slots looked at for one (full: one with nothing
                                           waiting evicted, or no slot) */
#define AGING (4 * SOURCE_SLOTS)        /* sightings between two halvings of `answered` */
#define UNSLOTTED (1u << 20)            /* counts of sources without a slot, by their hash */
#define MAX_VIAS 16
#define MAX_HEADERS 128                 /* as sip/message.py */
#define MAX_LINE 8192
#define MAX_BODY 32768
#define OUT_SIZE 16384
#define SERVER_MAX 256
#define MAX_URI_LENGTH 2048             /* as sip/uri.py: a longer URI is refused 400 there */

typedef struct item {
    struct item *next;
    struct sockaddr_storage addr;
    size_t len;
    int flag; /* 1: its 100 Trying was sent from here */
    int limited; /* 1: counted in its source's `waiting`; 2: in `unslotted` */
    int keep; /* 1: queued at the end of its batch; 0: dropped there (a full queue) */
    char data[];
} item;

typedef struct {
    uint64_t hash;
    double until;
} seen_slot;

typedef struct {
    unsigned char family; /* 0: empty */
    unsigned char admitted; /* its INVITEs may be answered here (`admit`) */
    unsigned char addr[16];
    int waiting; /* its INVITEs and REGISTERs in the queue (answered here or not) */
    int allowance; /* how many more of those the admission control judges before it drops */
    int answered; /* its INVITEs answered here, halved each AGING sightings (`seen`):
                     of the slots with nothing waiting, the fewest are evicted first */
    uint64_t last; /* when last seen (`tick`): the least recent of those is evicted first */
} source_slot;

typedef struct {
    int fd, family, wakefd, stopfd, sendfd;
    pthread_t thread;
    int running;
    pthread_mutex_t lock;
    item *head, *tail;
    size_t count, bytes, invites; /* (`invites`: of `count`, INVITEs) */
    item *out_head, *out_tail; /* datagrams to send (`send`): written by the thread */
    size_t out_count;
    long send_failed;
    int need_wake;
    int margin;    /* requests the loop may have taken and not yet handled (its DRAIN) */
    int admit_all; /* no admission control: every source may be answered */
    int answer;    /* new INVITEs are answered 100 from here at all (`start`'s `answer`) */
    size_t queue_max; /* datagrams the queue holds (QUEUE_MAX, or fewer for tests) */
    int refusing;  /* the node refuses new calls (draining): no 100 before the loop's 503 */
    source_slot sources[SOURCE_SLOTS];
    /* INVITEs and REGISTERs waiting from sources without a slot, by their source's hash
     * (`source_find`'s `wide`, UNSLOTTED of them): a source is answered only when none of its
     * hash's waits, since its own `waiting` does not count them. (By the slot's index, as
     * first, a flood of REGISTERs or garbage from as many sources as slots kept every index
     * counted while it waited, and no INVITE was answered here: test_sip_thread_sources.py.)
     * At most QUEUE_MAX waiting: one source in 256 shares a count with one at the most. */
    uint16_t *unslotted;
    uint64_t tick; /* sources seen */
    /* counters since the last drain */
    long oversized, errors, queue_full, tried;
    char server[SERVER_MAX];
    size_t server_len;
    uint64_t key; /* the hashes' random key (getrandom at `start`) */
    /* the thread's own */
    seen_slot *seen;
    unsigned char (*bufs)[READ_SIZE];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_storage addrs[BATCH];
    struct mmsghdr smsgs[BATCH];
    struct iovec siov[BATCH];
} reader;

/* -- the 100 Trying, built from an INVITE's bytes ---------------------------------------- */

typedef struct {
    const char *p;
    size_t n;
} span;

static int lower(int c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

static int span_is(span s, const char *name) {
    size_t n = strlen(name);
    if (s.n != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)s.p[i]) != name[i])
            return 0;
    return 1;
}

static int is_token(int c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c && strchr("-.!%*_+`'~", c) != NULL);
}

static int contains_ci(span s, const char *needle) {
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= s.n; i++) {
        size_t j = 0;
        while (j < n && lower((unsigned char)s.p[i + j]) == needle[j])
            j++;
        if (j == n)
            return 1;
    }
    return 0;
}

/* FNV-1a from `key` (a reader's random key: its offset basis), then MurmurHash3's 64-bit
 * finalizer, so that every bit of the key and of the input reaches the low bits a table slot is
 * taken from: without the key, branches (or sources) can be crafted offline to fall in one slot
 * (tests/server/test_sip_thread_attack.py). Not a MAC: the hashes never leave the thread. */
static uint64_t hash_add(uint64_t h, const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static uint64_t hash_end(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h ? h : 1; /* 0 marks an empty slot */
}

static uint64_t keyed_hash(uint64_t key, const char *p, size_t n) {
    return hash_end(hash_add(key ^ 1469598103934665603ULL, p, n));
}

typedef struct {
    char *p;
    size_t n, cap;
    int bad;
} out_buf;

static void put(out_buf *o, const char *p, size_t n) {
    if (o->bad || o->n + n > o->cap) {
        o->bad = 1;
        return;
    }
    memcpy(o->p + o->n, p, n);
    o->n += n;
}

static void puts_(out_buf *o, const char *s) { put(o, s, strlen(s)); }

/* The top Via, checked and cut: `SIP/2.0/UDP host[:port]` and `;name[=value]` parameters of
 * token characters (values also ':', '[', ']'). 0 when it is one to answer. */
typedef struct {
    span host, port, params; /* params: from the first ';' to the end */
    span branch;
    int rport;
} via_parts;

static int is_value_char(int c) { return is_token(c) || c == ':' || c == '[' || c == ']'; }

static int cut_via(span v, via_parts *out) {
    static const char prefix[] = "SIP/2.0/UDP ";
    size_t i = sizeof(prefix) - 1;
    if (v.n <= i || memcmp(v.p, prefix, i) != 0)
        return -1;
    size_t start = i;
    if (v.p[i] == '[') {
        i++;
        while (i < v.n && (isxdigit((unsigned char)v.p[i]) || v.p[i] == ':' || v.p[i] == '.'))
            i++;
        if (i >= v.n || v.p[i] != ']' || i == start + 1) /* (`[]`: refused by the Via parser) */
            return -1;
        i++;
    } else {
        while (i < v.n && (isalnum((unsigned char)v.p[i]) || v.p[i] == '-' || v.p[i] == '.'))
            i++;
    }
    if (i == start)
        return -1;
    out->host = (span){v.p + start, i - start};
    out->port = (span){NULL, 0};
    if (i < v.n && v.p[i] == ':') {
        size_t p0 = ++i;
        long port = 0;
        while (i < v.n && v.p[i] >= '0' && v.p[i] <= '9' && i - p0 < 6)
            port = port * 10 + (v.p[i++] - '0');
        if (i == p0 || i - p0 > 5 || v.p[p0] == '0' || port < 1 || port > 65535)
            return -1;
        out->port = (span){v.p + p0, i - p0};
    }
    out->params = (span){v.p + i, v.n - i};
    out->branch = (span){NULL, 0};
    out->rport = 0;
    int have_branch = 0;
    while (i < v.n) {
        if (v.p[i] != ';')
            return -1;
        size_t n0 = ++i;
        while (i < v.n && is_token((unsigned char)v.p[i]))
            i++;
        span name = {v.p + n0, i - n0};
        if (name.n == 0)
            return -1;
        span value = {NULL, 0};
        if (i < v.n && v.p[i] == '=') {
            size_t v0 = ++i;
            while (i < v.n && is_value_char((unsigned char)v.p[i]))
                i++;
            if (i == v0)
                return -1;
            value = (span){v.p + v0, i - v0};
        }
        if (i < v.n && v.p[i] != ';')
            return -1;
        if (span_is(name, "branch") && !have_branch) {
            have_branch = 1;
            if (value.p == NULL)
                return -1;
            out->branch = value;
        } else if (span_is(name, "rport")) {
            out->rport = 1;
        }
    }
    if (!have_branch || out->branch.n <= 7 || memcmp(out->branch.p, "z9hG4bK", 7) != 0)
        return -1;
    return 0;
}

/* `;name[=value]...` of tokens (values also ':', '[', ']'), from `p` to `end`: 0 when well formed. */
static int check_params(const char *p, const char *end) {
    while (p < end) {
        if (*p != ';')
            return -1;
        const char *n0 = ++p;
        while (p < end && is_token((unsigned char)*p))
            p++;
        if (p == n0)
            return -1;
        if (p < end && *p == '=') {
            const char *v0 = ++p;
            while (p < end && is_value_char((unsigned char)*p))
                p++;
            if (p == v0)
                return -1;
        }
    }
    return 0;
}

static int is_uri_char(int c, const char *extra) {
    return isalnum(c) || (c && strchr(extra, c) != NULL);
}

/* A SIP URI's text after its scheme, of the plainest shape: [user[:password]@]host[:port]
 * [;param[=value]...], no headers (sip/uri.py's grammar, or stricter). */
static int check_host(span u) {
    const char *end = u.p + u.n, *p = u.p;
    const char *at = NULL;
    for (const char *q = u.p; q < end; q++) {
        if (*q == '?')
            return -1;
        if (*q == '@')
            at = q;
    }
    if (at != NULL) {
        int colons = 0; /* user[:password]: parse_uri refuses a ':' in the password */
        for (const char *q = u.p; q < at; q++)
            if (!is_uri_char((unsigned char)*q, "-_.!~*'()%&=+$,;/#:") ||
                (*q == ':' && ++colons > 1))
                return -1;
        p = at + 1;
    }
    const char *h0 = p;
    if (p < end && *p == '[') {
        p++;
        while (p < end && (isxdigit((unsigned char)*p) || *p == ':' || *p == '.'))
            p++;
        if (p >= end || *p != ']' || p == h0 + 1)
            return -1;
        p++;
    } else {
        while (p < end && (isalnum((unsigned char)*p) || *p == '-' || *p == '.'))
            p++;
        if (p == h0 || !isalnum((unsigned char)*h0) || p[-1] == '-')
            return -1;
    }
    if (p < end && *p == ':') {
        const char *d0 = ++p;
        long port = 0;
        while (p < end && *p >= '0' && *p <= '9' && p - d0 < 6)
            port = port * 10 + (*p++ - '0');
        if (p == d0 || p - d0 > 5 || port < 1 || port > 65535)
            return -1;
    }
    while (p < end) { /* ;name[=value] of paramchars */
        if (*p != ';')
            return -1;
        const char *n0 = ++p;
        while (p < end && is_uri_char((unsigned char)*p, "-_.!~*'()%&+$"))
            p++;
        if (p == n0)
            return -1;
        if (p < end && *p == '=') {
            const char *v0 = ++p;
            while (p < end && is_uri_char((unsigned char)*p, "-_.!~*'()%[]/:&+$"))
                p++;
            if (p == v0)
                return -1;
        }
    }
    return 0;
}

/* A From or To value of the plainest shapes: `["display" | tokens] <uri>;params` or
 * `uri;params` (uri: sip:, sips: or tel:, without spaces, quotes, angle brackets or commas).
 * `params` gets the header parameters' text (`;name[=value]...`, checked). */
static int check_address(span a, span *params) {
    const char *p = a.p, *end = a.p + a.n;
    const char *open = memchr(p, '<', a.n);
    const char *uri, *uri_end, *rest;
    if (open != NULL) {
        const char *q = p;
        if (q < open && *q == '"') {
            const char *close = memchr(q + 1, '"', (size_t)(open - q - 1));
            if (close == NULL || memchr(q + 1, '\\', (size_t)(close - q - 1)))
                return -1;
            for (q = close + 1; q < open; q++) /* (after a quoted name only spaces up to '<') */
                if (*q != ' ' && *q != '\t')
                    return -1;
        }
        for (; q < open; q++)
            if (!is_token((unsigned char)*q) && *q != ' ' && *q != '\t')
                return -1;
        uri = open + 1;
        uri_end = memchr(uri, '>', (size_t)(end - uri));
        if (uri_end == NULL)
            return -1;
        rest = uri_end + 1;
        while (rest < end && (*rest == ' ' || *rest == '\t'))
            rest++;
    } else {
        uri = p;
        uri_end = memchr(p, ';', a.n);
        if (uri_end == NULL)
            uri_end = end;
        rest = uri_end;
    }
    size_t n = (size_t)(uri_end - uri);
    if (n > MAX_URI_LENGTH || (open == NULL && (size_t)(end - uri) > MAX_URI_LENGTH))
        return -1; /* (parse_uri refuses a longer one; an addr-spec's parameters counted too) */
    span scheme = {uri, 0};
    const char *colon = memchr(uri, ':', n);
    if (colon == NULL)
        return -1;
    scheme.n = (size_t)(colon - uri);
    if (!span_is(scheme, "sip") && !span_is(scheme, "sips") && !span_is(scheme, "tel"))
        return -1;
    if (uri_end - colon < 2)
        return -1;
    for (const char *q = colon + 1; q < uri_end; q++)
        if (*q == ' ' || *q == '\t' || *q == '"' || *q == '<' || *q == '>' || *q == ',')
            return -1;
    span after = {colon + 1, (size_t)(uri_end - colon - 1)};
    if (span_is(scheme, "tel")) { /* sip/uri.py's _TEL_NUMBER: \+?[0-9A-Fa-f*#\-.()pw]+ */
        size_t i = after.n > 0 && after.p[0] == '+';
        if (i >= after.n)
            return -1;
        for (; i < after.n; i++) {
            char c = after.p[i];
            if (!isxdigit((unsigned char)c) && !(c && strchr("*#-.()pw", c)))
                return -1;
        }
    } else if (check_host(after) < 0) {
        return -1;
    }
    *params = (span){rest, (size_t)(end - rest)};
    return check_params(rest, end);
}

/* The value of the first `tag` parameter (any case, as sip/headers.py's param_value) of checked
 * `;name[=value]...` text: empty when none, or one without a value. */
static span tag_of(span params) {
    const char *p = params.p, *end = params.p + params.n;
    while (p < end) {
        const char *n0 = ++p; /* (past the ';') */
        while (p < end && *p != ';' && *p != '=')
            p++;
        span name = {n0, (size_t)(p - n0)};
        const char *v0 = p < end && *p == '=' ? p + 1 : p;
        while (p < end && *p != ';')
            p++;
        if (span_is(name, "tag"))
            return (span){v0, (size_t)(p - v0)};
    }
    return (span){params.p, 0};
}

/* Strip spaces and tabs at both ends, as Python's str.strip does for ASCII (other whitespace
 * characters are refused before). */
static span strip(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    return (span){p, (size_t)(end - p)};
}

static int digits(span s, size_t most) {
    if (s.n == 0 || s.n > most)
        return 0;
    for (size_t i = 0; i < s.n; i++)
        if (s.p[i] < '0' || s.p[i] > '9')
            return 0;
    return 1;
}

/* The number `digits` checked, read from the span alone: a datagram the thread read is no C
 * string (no NUL after it), so strtol on it read on to the end of the buffer as far as the C
 * library's contract goes (ASan's strict_string_checks: a heap-buffer-overflow). */
static unsigned long digits_value(span s) {
    unsigned long value = 0;
    for (size_t i = 0; i < s.n; i++)
        value = value * 10 + (unsigned long)(s.p[i] - '0');
    return value;
}

/* The 100 Trying for `data` (an INVITE from peer_host:peer_port) into `out`: its length, or -1
 * when this INVITE is left to Python. `branch_hash` gets the hash (keyed with `key`) of the top
 * Via branch, `merge_hash` that of the endpoint's merge key (Call-ID, From tag, CSeq number and
 * method: s8.2.2.2), each 0 when it could not be found. */
static long build_trying(const char *data, size_t len, const char *peer_host, int peer_port,
                         const char *server, size_t server_len, char *outp, size_t outcap,
                         uint64_t key, uint64_t *branch_hash, uint64_t *merge_hash) {
    *branch_hash = *merge_hash = 0;
    if (len < 16 || len > READ_SIZE || memcmp(data, "INVITE ", 7) != 0)
        return -1;
    const char *end = NULL;
    for (size_t i = 0; i + 3 < len; i++) {
        if (data[i] == '\r' && data[i + 1] == '\n' && data[i + 2] == '\r' && data[i + 3] == '\n') {
            end = data + i;
            break;
        }
    }
    if (end == NULL)
        return -1;
    size_t body = len - (size_t)(end + 4 - data);
    if (body > MAX_BODY)
        return -1;
    /* Only printable ASCII, tabs and CRLF pairs in the head. */
    for (const char *p = data; p < end; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '\r') {
            if (p + 1 >= end || p[1] != '\n')
                return -1;
            p++;
            continue;
        }
        if (c == '\n' || c >= 0x7f || (c < 0x20 && c != '\t'))
            return -1;
    }
    /* The request line: INVITE sip:... SIP/2.0 */
    const char *line_end = memchr(data, '\r', (size_t)(end - data));
    if (line_end == NULL)
        return -1; /* no header at all */
    span uri = {data + 7, 0};
    const char *sp = memchr(uri.p, ' ', (size_t)(line_end - uri.p));
    if (sp == NULL || line_end - sp != 8 || memcmp(sp, " SIP/2.0", 8) != 0)
        return -1;
    uri.n = (size_t)(sp - uri.p);
    if (uri.n > MAX_URI_LENGTH)
        return -1;
    if (uri.n > 4 && memcmp(uri.p, "sip:", 4) == 0) {
        if (check_host((span){uri.p + 4, uri.n - 4}) < 0)
            return -1;
    } else if (uri.n > 5 && memcmp(uri.p, "sips:", 5) == 0) {
        if (check_host((span){uri.p + 5, uri.n - 5}) < 0)
            return -1;
    } else {
        return -1;
    }
    for (size_t i = 0; i < uri.n; i++)
        if (uri.p[i] == '\t')
            return -1;
    span vias[MAX_VIAS];
    int nvia = 0;
    span from = {0}, to = {0}, call_id = {0}, cseq = {0}, length = {0}, forwards = {0};
    int headers = 0;
    const char *p = line_end + 2;
    while (p < end) {
        const char *e = memchr(p, '\r', (size_t)(end - p));
        if (e == NULL)
            e = end;
        if (++headers > MAX_HEADERS || e - p > MAX_LINE || e == p || *p == ' ' || *p == '\t')
            return -1;
        const char *colon = memchr(p, ':', (size_t)(e - p));
        if (colon == NULL || colon == p)
            return -1;
        span name = {p, (size_t)(colon - p)};
        for (size_t i = 0; i < name.n; i++)
            if (!is_token((unsigned char)name.p[i]))
                return -1;
        span value = strip(colon + 1, e);
        span *one = NULL;
        if (span_is(name, "via") || span_is(name, "v")) {
            if (nvia >= MAX_VIAS)
                return -1;
            vias[nvia++] = value;
        } else if (span_is(name, "from") || span_is(name, "f")) {
            one = &from;
        } else if (span_is(name, "to") || span_is(name, "t")) {
            one = &to;
        } else if (span_is(name, "call-id") || span_is(name, "i")) {
            one = &call_id;
        } else if (span_is(name, "cseq")) {
            one = &cseq;
        } else if (span_is(name, "content-length") || span_is(name, "l")) {
            one = &length;
        } else if (span_is(name, "max-forwards")) {
            one = &forwards;
        } else if (span_is(name, "timestamp") || span_is(name, "require")) {
            return -1; /* (s8.2.6.1's echoed Timestamp; a Require Python may refuse 420) */
        }
        if (one != NULL) {
            if (one->p != NULL || value.n == 0)
                return -1; /* repeated or empty: Python decides */
            *one = value;
        }
        p = e + 2;
    }
    if (nvia == 0 || !from.p || !to.p || !call_id.p || !cseq.p)
        return -1;
    span from_params, to_params;
    if (check_address(from, &from_params) < 0 || check_address(to, &to_params) < 0)
        return -1;
    if (contains_ci(to, "tag"))
        return -1; /* a tag (or something that may be one): inside a dialog, or doubtful */
    for (size_t i = 0; i < call_id.n; i++)
        if (call_id.p[i] == ' ' || call_id.p[i] == '\t')
            return -1;
    /* CSeq: digits, spaces, INVITE */
    unsigned long seq = 0;
    {
        size_t i = 0;
        while (i < cseq.n && cseq.p[i] >= '0' && cseq.p[i] <= '9' && i < 10)
            seq = seq * 10 + (unsigned long)(cseq.p[i++] - '0');
        if (i == 0 || i > 9 || i >= cseq.n || cseq.p[i] != ' ')
            return -1;
        while (i < cseq.n && cseq.p[i] == ' ')
            i++;
        if (cseq.n - i != 6 || memcmp(cseq.p + i, "INVITE", 6) != 0)
            return -1;
    }
    if (forwards.p != NULL) {
        if (!digits(forwards, 3) || digits_value(forwards) == 0)
            return -1;
    }
    if (length.p != NULL) {
        if (!digits(length, 5) || digits_value(length) > body)
            return -1;
    }
    for (int v = 0; v < nvia; v++)
        for (size_t i = 0; i < vias[v].n; i++)
            if (vias[v].p[i] == ',' && v == 0)
                return -1;
    via_parts top;
    if (cut_via(vias[0], &top) < 0)
        return -1;
    *branch_hash = keyed_hash(key, top.branch.p, top.branch.n);
    {
        /* (the CSeq's number as a value: "01" and "1" are the same request to the endpoint) */
        char number[24];
        int digits_n = snprintf(number, sizeof(number), "\n%lu\n", seq);
        span tag = tag_of(from_params);
        uint64_t h = hash_add(key ^ 1469598103934665603ULL, "merge\n", 6);
        h = hash_add(h, call_id.p, call_id.n);
        h = hash_add(h, number, (size_t)digits_n); /* (no Call-ID or tag holds a '\n') */
        h = hash_add(h, tag.p, tag.n);
        *merge_hash = hash_end(h);
    }

    out_buf o = {outp, 0, outcap, 0};
    puts_(&o, "SIP/2.0 100 Trying\r\n");
    for (int v = 0; v < nvia; v++) {
        puts_(&o, "Via: ");
        size_t host_len = strlen(peer_host);
        int same_host = top.host.n == host_len && memcmp(top.host.p, peer_host, host_len) == 0;
        if (v == 0 && (top.rport || !same_host)) {
            /* RFC 3581: received (and rport) set, as the endpoint rewrites the top Via */
            put(&o, vias[0].p, (size_t)(top.params.p - vias[0].p));
            const char *q = top.params.p, *qe = top.params.p + top.params.n;
            while (q < qe) {
                const char *next = memchr(q + 1, ';', (size_t)(qe - q - 1));
                if (next == NULL)
                    next = qe;
                const char *eq = memchr(q + 1, '=', (size_t)(next - q - 1));
                span name = {q + 1, (size_t)((eq ? eq : next) - q - 1)};
                if (!span_is(name, "received") && !span_is(name, "rport"))
                    put(&o, q, (size_t)(next - q));
                q = next;
            }
            puts_(&o, ";received=");
            puts_(&o, peer_host);
            if (top.rport) {
                char port[16];
                snprintf(port, sizeof(port), ";rport=%d", peer_port);
                puts_(&o, port);
            }
        } else {
            put(&o, vias[v].p, vias[v].n);
        }
        puts_(&o, "\r\n");
    }
    puts_(&o, "From: ");
    put(&o, from.p, from.n);
    puts_(&o, "\r\nTo: ");
    put(&o, to.p, to.n);
    puts_(&o, "\r\nCall-ID: ");
    put(&o, call_id.p, call_id.n);
    puts_(&o, "\r\nCSeq: ");
    put(&o, cseq.p, cseq.n);
    puts_(&o, "\r\nServer: ");
    put(&o, server, server_len);
    puts_(&o, "\r\nContent-Length: 0\r\n\r\n");
    if (o.bad)
        return -1;
    return (long)o.n;
}

/* -- the thread ----------------------------------------------------------------------------- */

static double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Remember `hash` until now + LINGER. 1: seen before (still remembered); 0: new, remembered.
 * A window of SEEN_PROBE slots all remembered (two hashes a new INVITE: at 1,000 a second for
 * LINGER, half the table, where a full window by chance is rare; crafted, the key prevents it)
 * evicts the one expiring first: that branch, read again, would be taken for new and its 100
 * sent again from here, a 100 its transaction has sent already (a UAC ignores a 100 after any
 * other response), or that merge key's fork answered 100 before its 482, as before the key. */
static int seen_mark(reader *r, uint64_t hash, double now) {
    size_t at = (size_t)(hash & (SEEN_SLOTS - 1));
    seen_slot *free_slot = NULL, *first = NULL;
    for (int i = 0; i < SEEN_PROBE; i++) {
        seen_slot *s = &r->seen[(at + (size_t)i) & (SEEN_SLOTS - 1)];
        if (s->hash == hash && s->until >= now) {
            s->until = now + LINGER;
            return 1;
        }
        if (free_slot == NULL && (s->hash == 0 || s->until < now))
            free_slot = s;
        if (first == NULL || s->until < first->until)
            first = s;
    }
    if (free_slot == NULL)
        free_slot = first;
    free_slot->hash = hash;
    free_slot->until = now + LINGER;
    return 0;
}

static uint64_t source_hash(const reader *r, const unsigned char *addr, int family) {
    return keyed_hash(r->key, (const char *)addr, family == AF_INET ? 4 : 16);
}

/* The source's address bytes (an IPv4-mapped IPv6 address as seen, as its text says). */
static int addr_bytes(const struct sockaddr_storage *a, unsigned char out[16], int *family) {
    memset(out, 0, 16);
    if (a->ss_family == AF_INET) {
        memcpy(out, &((const struct sockaddr_in *)a)->sin_addr, 4);
        *family = AF_INET;
        return 0;
    }
    if (a->ss_family == AF_INET6) {
        memcpy(out, &((const struct sockaddr_in6 *)a)->sin6_addr, 16);
        *family = AF_INET6;
        return 0;
    }
    return -1;
}

/* One more source sighting (`tick`): every AGING of them, each slot's `answered` halved, so
 * that a caller answered often lately outlasts a flood of sources seen once or twice (each
 * one's slot taken over first), and one no longer calling does not keep its slot for ever.
 * (Halved each SOURCE_SLOTS sightings, a flood of 12,000 sources at 10,000 a second aged a
 * caller placing 4 calls a second down to their 1 or 2, and the least recently seen went.) */
static uint64_t seen(reader *r) {
    if (++r->tick % AGING == 0)
        for (size_t i = 0; i < SOURCE_SLOTS; i++)
            r->sources[i].answered /= 2;
    return r->tick;
}

/* The slot of a source among the SOURCE_PROBE from its index, made when `add`: in an empty
 * slot, or else in place of one with nothing waiting (one not admitted first, then the one
 * answered least lately, then the least recently seen); NULL when every slot there has
 * something waiting (whose counts must stay whole: the source then gets no slot this time).
 * `wide` gets its `unslotted` index. With the lock held. */
static source_slot *source_find(reader *r, const unsigned char addr[16], int family, int add,
                                size_t *wide) {
    uint64_t h = source_hash(r, addr, family);
    size_t at = (size_t)(h % SOURCE_SLOTS);
    source_slot *empty = NULL, *victim = NULL;
    *wide = (size_t)(h >> 40) & (UNSLOTTED - 1);
    for (size_t i = 0; i < SOURCE_PROBE; i++) {
        source_slot *s = &r->sources[(at + i) % SOURCE_SLOTS];
        if (s->family == family && memcmp(s->addr, addr, 16) == 0)
            return s;
        if (s->family == 0) { /* (a slot is never emptied, only taken over: none further) */
            empty = s;
            break;
        }
        if (s->waiting == 0 && (victim == NULL || s->admitted < victim->admitted ||
                                (s->admitted == victim->admitted &&
                                 (s->answered < victim->answered ||
                                  (s->answered == victim->answered && s->last < victim->last)))))
            victim = s;
    }
    if (!add)
        return NULL;
    source_slot *s = empty != NULL ? empty : victim;
    if (s == NULL)
        return NULL;
    memset(s, 0, sizeof(*s));
    s->family = (unsigned char)family;
    memcpy(s->addr, addr, 16);
    s->last = seen(r);
    return s;
}

/* The slot of a datagram's source (`source_find`); `home` UNSLOTTED when it has no address
 * a slot is kept for. */
static source_slot *source_of(reader *r, const struct sockaddr_storage *a, int add, size_t *home) {
    unsigned char addr[16];
    int family;
    *home = UNSLOTTED;
    if (addr_bytes(a, addr, &family) < 0)
        return NULL;
    return source_find(r, addr, family, add, home);
}

/* A limited item leaves the queue: uncounted. With the lock held. */
static void source_leave(reader *r, item *it) {
    if (!it->limited)
        return;
    size_t home;
    source_slot *s = source_of(r, &it->addr, 0, &home);
    if (it->limited == 1 && s != NULL && s->waiting > 0)
        s->waiting--;
    else if (it->limited == 2 && home < UNSLOTTED && r->unslotted[home] > 0)
        r->unslotted[home]--;
}

static int is_invite(const item *it) {
    return it->len > 7 && memcmp(it->data, "INVITE ", 7) == 0;
}

/* Whether the queue, holding `count` datagrams (`invites` of them INVITEs) of `bytes`, has
 * room for `it`. INVITEs fill only half of it, but those answered here (`answering`: from a
 * source the admission control let through) up to another eighth, which nothing else takes
 * when this thread answers INVITEs: a flood from new sources, of REGISTERs or of garbage, that
 * fills the queue does not drop them with it (test_sip_thread_sources.py); what completes
 * calls under way still has 3/8 of the queue that no INVITE takes. */
static int room_for(const reader *r, const item *it, size_t count, size_t invites, size_t bytes,
                    int answering) {
    size_t half = (r->queue_max + 1) / 2, kept = r->answer ? r->queue_max / 8 : 0;
    size_t kept_bytes = r->answer ? QUEUE_BYTES / 8 : 0;
    if (!is_invite(it))
        return count < r->queue_max - kept && bytes + it->len <= QUEUE_BYTES - kept_bytes;
    if (answering)
        return count < r->queue_max && invites < half + kept && bytes + it->len <= QUEUE_BYTES;
    return count < half && bytes + it->len <= QUEUE_BYTES / 2;
}

/* One datagram read: counted when an INVITE or REGISTER (what the admission control limits),
 * and answered 100 from here when it is a new INVITE to answer: 1 when its 100 went out.
 *
 * A source is answered only when, counting its limited requests waiting in the queue and the
 * `margin` the loop may have taken and not yet handled, this one is within the `allowance` the
 * admission control gave it when it judged the source's last (`admit`: how many more it judges
 * before it could drop one, at the least): so no INVITE it would drop unanswered gets a 100
 * from here. A refusal or drop sets the allowance to 0.
 *
 * Nor does an INVITE this thread would drop itself, for a full queue: it is answered only when
 * the queue has room for it after the `ahead` datagrams (`ahead_bytes`) read before it in the
 * same batch (the loop only takes from the queue meanwhile, so that room is still there when
 * the batch is queued). A UAC stops retransmitting an INVITE once it has a 100 (s17.1.1.2): one
 * answered here and then lost would wait for its final response until its Timer B. */
static int consider(reader *r, item *it, socklen_t addrlen, double *now, size_t ahead,
                    size_t ahead_bytes) {
    if (!r->answer)
        return 0; /* the loop makes every 100 (its lazy one): nothing to count for it here */
    const char *data = it->data;
    size_t len = it->len;
    int invite = len > 7 && memcmp(data, "INVITE ", 7) == 0;
    if (!invite && !(len > 9 && memcmp(data, "REGISTER ", 9) == 0))
        return 0;
    char host[INET6_ADDRSTRLEN];
    int port;
    char out[OUT_SIZE];
    long n = -1;
    if (invite && host_text(&it->addr, host, sizeof(host), &port) == 0) {
        uint64_t hash, merge;
        n = build_trying(data, len, host, port, r->server, r->server_len, out, sizeof(out),
                         r->key, &hash, &merge);
        if (hash != 0) {
            if (*now == 0)
                *now = monotonic();
            /* every branch read is remembered, answered or not: its retransmissions never are */
            if (seen_mark(r, hash, *now) != 0)
                n = -1;
            /* and its merge key: the same request on another branch (a fork come back, which
             * the endpoint refuses 482 while the first one's transaction lasts) never is */
            if (merge != 0 && seen_mark(r, merge, *now) != 0)
                n = -1;
        }
    }
    pthread_mutex_lock(&r->lock);
    /* (a slot made only for one this thread would answer: any other keeps no slot busy) */
    size_t home;
    source_slot *s = source_of(r, &it->addr, n >= 0, &home);
    int may = 0;
    if (s != NULL) {
        may = n >= 0 && !r->refusing && r->unslotted[home] == 0 &&
              room_for(r, it, r->count + ahead, r->invites + ahead, r->bytes + ahead_bytes, 1) &&
              (r->admit_all ||
               (s->admitted && (long)s->waiting + 1 + r->margin <= (long)s->allowance));
        s->waiting++;
        s->last = seen(r);
        s->answered += may && s->answered < (1 << 20);
        it->limited = 1;
    } else if (home < UNSLOTTED) {
        r->unslotted[home]++;
        it->limited = 2;
    }
    pthread_mutex_unlock(&r->lock);
    if (!may)
        return 0;
    if (sendto(r->fd, out, (size_t)n, MSG_DONTWAIT, (const struct sockaddr *)&it->addr, addrlen) != n)
        return 0; /* not sent: Python's lazy 100 as before */
    return 1;
}

/* Send what the loop queued (`send`), with sendmmsg, BATCH at a time. */
static void send_queued(reader *r) {
    uint64_t count;
    ssize_t got = read(r->sendfd, &count, sizeof(count));
    (void)got;
    pthread_mutex_lock(&r->lock);
    item *it = r->out_head;
    r->out_head = r->out_tail = NULL;
    r->out_count = 0;
    pthread_mutex_unlock(&r->lock);
    long failed = 0;
    while (it != NULL) {
        item *batch[BATCH];
        int n = 0;
        for (; it != NULL && n < BATCH; it = it->next, n++) {
            batch[n] = it;
            r->siov[n].iov_base = it->data;
            r->siov[n].iov_len = it->len;
            memset(&r->smsgs[n].msg_hdr, 0, sizeof(r->smsgs[n].msg_hdr));
            r->smsgs[n].msg_hdr.msg_iov = &r->siov[n];
            r->smsgs[n].msg_hdr.msg_iovlen = 1;
            r->smsgs[n].msg_hdr.msg_name = &it->addr;
            r->smsgs[n].msg_hdr.msg_namelen = addr_len(&it->addr);
        }
        int done = 0;
        while (done < n) {
            int sent = sendmmsg(r->fd, &r->smsgs[done], (unsigned int)(n - done), MSG_DONTWAIT);
            if (sent > 0) {
                done += sent;
            } else if (sent < 0 && errno == EINTR) {
                continue;
            } else {
                failed++; /* (that datagram: SIP retransmission covers it) */
                done++;
            }
        }
        for (int i = 0; i < n; i++)
            free(batch[i]);
    }
    if (failed) {
        pthread_mutex_lock(&r->lock);
        r->send_failed += failed;
        pthread_mutex_unlock(&r->lock);
    }
}

static void *run(void *arg) {
    reader *r = arg;
    struct pollfd fds[3] = {{r->fd, POLLIN, 0}, {r->stopfd, POLLIN, 0}, {r->sendfd, POLLIN, 0}};
    for (;;) {
        int ready = poll(fds, 3, -1);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (fds[1].revents) {
            send_queued(r); /* what the loop queued before it stopped us */
            break;
        }
        if (fds[2].revents & POLLIN)
            send_queued(r);
        if (!(fds[0].revents & (POLLIN | POLLERR)))
            continue;
        for (int i = 0; i < BATCH; i++) {
            r->iov[i].iov_base = r->bufs[i];
            r->iov[i].iov_len = READ_SIZE;
            memset(&r->msgs[i].msg_hdr, 0, sizeof(r->msgs[i].msg_hdr));
            r->msgs[i].msg_hdr.msg_iov = &r->iov[i];
            r->msgs[i].msg_hdr.msg_iovlen = 1;
            r->msgs[i].msg_hdr.msg_name = &r->addrs[i];
            r->msgs[i].msg_hdr.msg_namelen = sizeof(r->addrs[i]);
        }
        int n = recvmmsg(r->fd, r->msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                pthread_mutex_lock(&r->lock);
                r->errors++; /* ICMP errors for earlier sends: counted */
                pthread_mutex_unlock(&r->lock);
            }
            continue;
        }
        double now = 0;
        item *first = NULL, *last = NULL;
        long oversized = 0, tried = 0;
        /* What this batch will add to the queue, decided as each datagram is read: on the
         * queue as it was when the batch began (the loop only takes from it meanwhile, so what
         * fits then still fits when the batch is queued). Only what is kept counts as `ahead`
         * of the next: datagrams this batch drops for a full queue took no room. (Counting them
         * too, a flood of other requests still being read filled the room kept for an admitted
         * caller's INVITE read in the same batch: no 100 from here, and the INVITE dropped.) */
        size_t added = 0, added_invites = 0, added_bytes = 0;
        pthread_mutex_lock(&r->lock);
        size_t base = r->count, base_invites = r->invites, base_bytes = r->bytes;
        pthread_mutex_unlock(&r->lock);
        for (int i = 0; i < n; i++) {
            size_t len = r->msgs[i].msg_len;
            if (r->msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
                oversized++;
                continue;
            }
            item *it = malloc(sizeof(item) + (len ? len : 1));
            if (it == NULL)
                continue;
            it->next = NULL;
            it->len = len;
            it->addr = r->addrs[i];
            memcpy(it->data, r->bufs[i], len);
            it->flag = 0;
            it->limited = 0;
            it->flag = consider(r, it, r->msgs[i].msg_hdr.msg_namelen, &now, added, added_bytes);
            tried += it->flag;
            /* (one answered 100 here had its room kept by `consider`: never dropped) */
            it->keep = it->flag || room_for(r, it, base + added, base_invites + added_invites,
                                            base_bytes + added_bytes, 0);
            if (last)
                last->next = it;
            else
                first = it;
            last = it;
            if (it->keep) {
                added++;
                added_invites += (size_t)is_invite(it);
                added_bytes += len;
            }
        }
        int wake = 0;
        pthread_mutex_lock(&r->lock);
        r->oversized += oversized;
        r->tried += tried;
        for (item *it = first; it != NULL;) {
            item *next = it->next;
            if (!it->keep) {
                r->queue_full++;
                source_leave(r, it);
                free(it);
            } else {
                it->next = NULL;
                if (r->tail)
                    r->tail->next = it;
                else
                    r->head = it;
                r->tail = it;
                r->count++;
                r->invites += (size_t)is_invite(it);
                r->bytes += it->len;
            }
            it = next;
        }
        if (r->count && r->need_wake) {
            r->need_wake = 0;
            wake = 1;
        }
        pthread_mutex_unlock(&r->lock);
        if (wake) {
            uint64_t one = 1;
            ssize_t w = write(r->wakefd, &one, sizeof(one));
            (void)w;
        }
    }
    return NULL;
}

/* -- the Python side ------------------------------------------------------------------------ */

static const char CAPSULE[] = "sipbridge._csipthr.reader";

static reader *get(PyObject *capsule) {
    reader *r = PyCapsule_GetPointer(capsule, CAPSULE);
    if (r != NULL && !r->running) {
        PyErr_SetString(PyExc_ValueError, "the reader is stopped");
        return NULL;
    }
    return r;
}

static void release(reader *r) {
    for (item *it = r->head; it != NULL;) {
        item *next = it->next;
        free(it);
        it = next;
    }
    r->head = r->tail = NULL;
    r->count = r->bytes = r->invites = 0;
    for (item *it = r->out_head; it != NULL;) {
        item *next = it->next;
        free(it);
        it = next;
    }
    r->out_head = r->out_tail = NULL;
    r->out_count = 0;
    if (r->sendfd >= 0)
        close(r->sendfd);
    if (r->wakefd >= 0)
        close(r->wakefd);
    if (r->stopfd >= 0)
        close(r->stopfd);
    r->wakefd = r->stopfd = r->sendfd = -1;
    PyMem_RawFree(r->seen);
    PyMem_RawFree(r->bufs);
    PyMem_RawFree(r->unslotted);
    r->seen = NULL;
    r->bufs = NULL;
    r->unslotted = NULL;
}

static void stop_reader(reader *r) {
    if (!r->running)
        return;
    uint64_t one = 1;
    ssize_t w = write(r->stopfd, &one, sizeof(one));
    (void)w;
    pthread_join(r->thread, NULL); /* (the thread never takes the GIL: it ends at once) */
    r->running = 0;
    release(r);
    pthread_mutex_destroy(&r->lock);
}

static void capsule_free(PyObject *capsule) {
    reader *r = PyCapsule_GetPointer(capsule, CAPSULE);
    if (r == NULL)
        return;
    stop_reader(r);
    PyMem_RawFree(r);
}

static PyObject *start(PyObject *self, PyObject *args) {
    int fd, family, margin, admit_all, answer = 1, queue_max = QUEUE_MAX;
    unsigned long long key = 0;
    const char *server;
    Py_ssize_t server_len;
    if (!PyArg_ParseTuple(args, "iis#ip|piK", &fd, &family, &server, &server_len, &margin,
                          &admit_all, &answer, &queue_max, &key))
        return NULL;
    if (queue_max < 1 || queue_max > QUEUE_MAX) {
        PyErr_SetString(PyExc_ValueError, "queue_max is 1 to QUEUE_MAX");
        return NULL;
    }
    if (server_len >= SERVER_MAX || memchr(server, '\r', (size_t)server_len) ||
        memchr(server, '\n', (size_t)server_len)) {
        PyErr_SetString(PyExc_ValueError, "a server name is one short line");
        return NULL;
    }
    reader *r = PyMem_RawCalloc(1, sizeof(reader));
    if (r == NULL)
        return PyErr_NoMemory();
    r->fd = fd;
    r->family = family;
    r->margin = margin;
    r->admit_all = admit_all;
    r->answer = answer;
    r->queue_max = (size_t)queue_max;
    r->need_wake = 1;
    memcpy(r->server, server, (size_t)server_len);
    r->server_len = (size_t)server_len;
    r->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    r->stopfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    r->sendfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    r->key = (uint64_t)key;
    if (key == 0 && getrandom(&r->key, sizeof(r->key), 0) != (ssize_t)sizeof(r->key)) {
        /* (no entropy pool: the time, the pid and an address, better than no key) */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        r->key = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 16) ^
                 (uint64_t)(uintptr_t)r;
    }
    r->seen = PyMem_RawCalloc(SEEN_SLOTS, sizeof(seen_slot));
    r->bufs = PyMem_RawMalloc((size_t)BATCH * READ_SIZE);
    r->unslotted = PyMem_RawCalloc(UNSLOTTED, sizeof(uint16_t));
    if (r->wakefd < 0 || r->stopfd < 0 || r->sendfd < 0 || r->seen == NULL || r->bufs == NULL ||
        r->unslotted == NULL) {
        int err = errno;
        release(r);
        PyMem_RawFree(r);
        errno = err ? err : ENOMEM;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    pthread_mutex_init(&r->lock, NULL);
    int err = pthread_create(&r->thread, NULL, run, r);
    if (err != 0) {
        release(r);
        pthread_mutex_destroy(&r->lock);
        PyMem_RawFree(r);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    r->running = 1;
    PyObject *capsule = PyCapsule_New(r, CAPSULE, capsule_free);
    if (capsule == NULL) {
        stop_reader(r);
        PyMem_RawFree(r);
    }
    return capsule;
}

static PyObject *stop(PyObject *self, PyObject *capsule) {
    reader *r = PyCapsule_GetPointer(capsule, CAPSULE);
    if (r == NULL)
        return NULL;
    stop_reader(r);
    Py_RETURN_NONE;
}

static PyObject *wake_fd(PyObject *self, PyObject *capsule) {
    reader *r = get(capsule);
    return r ? PyLong_FromLong(r->wakefd) : NULL;
}

static PyObject *drain(PyObject *self, PyObject *args) {
    PyObject *capsule;
    int most;
    if (!PyArg_ParseTuple(args, "Oi", &capsule, &most))
        return NULL;
    reader *r = get(capsule);
    if (r == NULL)
        return NULL;
    uint64_t count;
    ssize_t got = read(r->wakefd, &count, sizeof(count)); /* (reset; nonblocking) */
    (void)got;
    pthread_mutex_lock(&r->lock);
    item *first = r->head, *last = NULL;
    int taken = 0;
    for (item *it = r->head; it != NULL && taken < most; it = it->next) {
        last = it;
        taken++;
    }
    if (last != NULL) {
        r->head = last->next;
        if (r->head == NULL)
            r->tail = NULL;
        last->next = NULL;
    } else {
        first = NULL;
    }
    r->count -= (size_t)taken;
    for (item *it = first; it != NULL; it = it->next) {
        r->bytes -= it->len;
        r->invites -= (size_t)is_invite(it);
        source_leave(r, it);
    }
    int more = r->count > 0;
    if (!more) {
        r->need_wake = 1;
    }
    long oversized = r->oversized, errors = r->errors + r->send_failed,
         queue_full = r->queue_full, tried = r->tried;
    r->oversized = r->errors = r->queue_full = r->tried = r->send_failed = 0;
    pthread_mutex_unlock(&r->lock);

    PyObject *list = PyList_New(taken);
    int failed = list == NULL;
    int i = 0;
    for (item *it = first; it != NULL; i++) {
        item *next = it->next;
        if (!failed) {
            PyObject *data = PyBytes_FromStringAndSize(it->data, (Py_ssize_t)it->len);
            PyObject *addr = data ? addr_tuple(&it->addr) : NULL;
            PyObject *entry = addr ? Py_BuildValue("(NNO)", data, addr, it->flag ? Py_True : Py_False) : NULL;
            if (entry == NULL) {
                Py_XDECREF(data);
                failed = 1;
            } else {
                PyList_SET_ITEM(list, i, entry);
            }
        }
        free(it);
        it = next;
    }
    if (failed) {
        Py_XDECREF(list);
        return NULL;
    }
    return Py_BuildValue("(Nillll)", list, more, oversized, errors, queue_full, tried);
}

/* Queue datagrams for the thread to send; one eventfd write when the queue was empty. */
static PyObject *send_datagrams(PyObject *self, PyObject *args) {
    PyObject *capsule, *items;
    if (!PyArg_ParseTuple(args, "OO!", &capsule, &PyList_Type, &items))
        return NULL;
    reader *r = get(capsule);
    if (r == NULL)
        return NULL;
    item *first = NULL, *last = NULL;
    int failed = 0, queued = 0;
    PyObject *previous = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *entry = PyList_GET_ITEM(items, i);
        char *data;
        Py_ssize_t size;
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 2 ||
            PyBytes_AsStringAndSize(PyTuple_GET_ITEM(entry, 0), &data, &size) < 0) {
            PyErr_Clear();
            failed++;
            continue;
        }
        item *it = malloc(sizeof(item) + (size ? (size_t)size : 1));
        if (it == NULL) {
            failed++;
            continue;
        }
        PyObject *addr = PyTuple_GET_ITEM(entry, 1);
        if (addr == previous && last != NULL) {
            it->addr = last->addr;
        } else if (to_sockaddr(addr, r->family, &it->addr) < 0) {
            free(it);
            failed++;
            continue;
        }
        previous = addr;
        memcpy(it->data, data, (size_t)size);
        it->len = (size_t)size;
        it->flag = 0;
        it->limited = 0;
        it->next = NULL;
        if (last)
            last->next = it;
        else
            first = it;
        last = it;
        queued++;
    }
    int wake = 0;
    if (first != NULL) {
        pthread_mutex_lock(&r->lock);
        if (r->out_count + (size_t)queued > QUEUE_MAX) {
            failed += queued; /* the thread is that far behind: dropped, counted */
            pthread_mutex_unlock(&r->lock);
            for (item *it = first; it != NULL;) {
                item *next = it->next;
                free(it);
                it = next;
            }
            return PyLong_FromLong(failed);
        }
        wake = r->out_head == NULL;
        if (r->out_tail)
            r->out_tail->next = first;
        else
            r->out_head = first;
        r->out_tail = last;
        r->out_count += (size_t)queued;
        pthread_mutex_unlock(&r->lock);
    }
    if (wake) {
        uint64_t one = 1;
        ssize_t w = write(r->sendfd, &one, sizeof(one));
        (void)w;
    }
    return PyLong_FromLong(failed);
}

static int host_bytes(const char *host, unsigned char out[16], int *family) {
    memset(out, 0, 16);
    if (inet_pton(AF_INET, host, out) == 1) {
        *family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, host, out) == 1) {
        *family = AF_INET6;
        return 0;
    }
    return -1;
}

static PyObject *admit(PyObject *self, PyObject *args) {
    PyObject *capsule;
    const char *host;
    int allowance;
    if (!PyArg_ParseTuple(args, "Osi", &capsule, &host, &allowance))
        return NULL;
    int yes = allowance > 0;
    reader *r = get(capsule);
    if (r == NULL)
        return NULL;
    unsigned char addr[16];
    int family;
    if (host_bytes(host, addr, &family) < 0)
        Py_RETURN_FALSE;
    pthread_mutex_lock(&r->lock);
    size_t home;
    source_slot *s = source_find(r, addr, family, yes, &home);
    if (s != NULL) {
        s->admitted = (unsigned char)yes;
        s->allowance = yes ? allowance : 0;
    }
    pthread_mutex_unlock(&r->lock);
    Py_RETURN_TRUE;
}

/* The source table's own counts, for tests (a walk of all of it): (slots in use, INVITEs and
 * REGISTERs waiting counted in a slot, those counted without one, datagrams queued). */
static PyObject *sources(PyObject *self, PyObject *capsule) {
    reader *r = get(capsule);
    if (r == NULL)
        return NULL;
    long used = 0, waiting = 0, unslotted = 0;
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < SOURCE_SLOTS; i++) {
        used += r->sources[i].family != 0;
        waiting += r->sources[i].waiting;
    }
    for (size_t i = 0; i < UNSLOTTED; i++)
        unslotted += r->unslotted[i];
    size_t queued = r->count;
    pthread_mutex_unlock(&r->lock);
    return Py_BuildValue("(llln)", used, waiting, unslotted, (Py_ssize_t)queued);
}

/* One source's slot: (admitted, waiting, allowance), or None when it has none. */
static PyObject *source(PyObject *self, PyObject *args) {
    PyObject *capsule;
    const char *host;
    if (!PyArg_ParseTuple(args, "Os", &capsule, &host))
        return NULL;
    reader *r = get(capsule);
    if (r == NULL)
        return NULL;
    unsigned char addr[16];
    int family;
    if (host_bytes(host, addr, &family) < 0)
        Py_RETURN_NONE;
    pthread_mutex_lock(&r->lock);
    size_t home;
    source_slot *s = source_find(r, addr, family, 0, &home);
    int admitted = s ? s->admitted : 0, waiting = s ? s->waiting : 0,
        allowance = s ? s->allowance : 0;
    pthread_mutex_unlock(&r->lock);
    if (s == NULL)
        Py_RETURN_NONE;
    return Py_BuildValue("(iii)", admitted, waiting, allowance);
}

static PyObject *refuse_new(PyObject *self, PyObject *args) {
    PyObject *capsule;
    int refusing;
    if (!PyArg_ParseTuple(args, "Op", &capsule, &refusing))
        return NULL;
    reader *r = get(capsule);
    if (r == NULL)
        return NULL;
    pthread_mutex_lock(&r->lock);
    r->refusing = refusing;
    pthread_mutex_unlock(&r->lock);
    Py_RETURN_NONE;
}

static PyObject *trying(PyObject *self, PyObject *args) {
    const char *data, *host, *server;
    Py_ssize_t len, server_len;
    int port;
    if (!PyArg_ParseTuple(args, "y#sis#", &data, &len, &host, &port, &server, &server_len))
        return NULL;
    char out[OUT_SIZE];
    uint64_t hash, merge;
    long n = build_trying(data, (size_t)len, host, port, server, (size_t)server_len, out,
                          sizeof(out), 0, &hash, &merge);
    if (n < 0)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(out, n);
}

static PyMethodDef methods[] = {
    {"start", start, METH_VARARGS,
     "start(fd, family, server, margin, admit_all, answer=True, queue_max=QUEUE_MAX, key=0)\n"
     "-> reader: the thread reading `fd` (`answer` false: no 100 Trying from the thread, the\n"
     "loop makes each; `queue_max`: datagrams waiting for the loop, at most QUEUE_MAX; `key`:\n"
     "its hashes' key, 0 for a random one (another for tests))"},
    {"stop", stop, METH_O, "stop(reader): the thread stopped and joined, its queue freed"},
    {"wake_fd", wake_fd, METH_O, "wake_fd(reader) -> the eventfd written when datagrams wait"},
    {"drain", drain, METH_VARARGS,
     "drain(reader, most) -> ([(data, (host, port), trying_sent)...], more, oversized, "
     "errors, queue_full, tried)"},
    {"send", send_datagrams, METH_VARARGS,
     "send(reader, [(data, (host, port))...]) -> failed: queued for the thread to send"},
    {"admit", admit, METH_VARARGS,
     "admit(reader, host, allowance): how many more INVITEs/REGISTERs from `host` the admission\n"
     "control judges before it could drop one (0: none; answer none of its INVITEs here)"},
    {"refuse_new", refuse_new, METH_VARARGS,
     "refuse_new(reader, refusing): while true, no INVITE is answered here (the loop refuses\n"
     "new calls: its 503 goes alone)"},
    {"sources", sources, METH_O,
     "sources(reader) -> (slots in use, limited requests queued counted in a slot, those\n"
     "counted without one, datagrams queued): the source table's counts"},
    {"source", source, METH_VARARGS,
     "source(reader, host) -> (admitted, waiting, allowance) of its slot, or None"},
    {"trying", trying, METH_VARARGS,
     "trying(data, host, port, server) -> the 100 Trying this thread would send, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_csipthr", "The SIP UDP socket read on a thread of its own", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__csipthr(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "BATCH", BATCH) < 0 ||
        PyModule_AddIntConstant(m, "QUEUE_MAX", QUEUE_MAX) < 0 ||
        PyModule_AddIntConstant(m, "SOURCE_SLOTS", SOURCE_SLOTS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
