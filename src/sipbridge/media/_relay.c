/* The relay's fast path compiled: `relay_datagram` of media/relay.py, line for line.
 *
 * Same signature, same decisions, same state: it reads and writes the legs' own Python
 * attributes (receiver, latch, sender, timeline, counters), so whichever path handled a packet,
 * every reader sees the same thing, and media/relay.py stays the reference (tests run both on
 * the same input and compare). What it saves is the interpreter: a pure relay's packet is one
 * C call from the socket driver instead of a few hundred bytecodes. Sans-IO like its model: no
 * socket, no clock; the listener's `relay_sink` sends.
 *
 * Built by `make` (setup.py, optional: without a compiler the pure-Python path runs).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define MAX_DROPOUT 3000 /* media/session.py */
#define FIXED 12

/* interned attribute names */
static PyObject *s_audio_pt, *s_srtp, *s_buffered, *s_first, *s_forward_to, *s_relay_sink,
    *s_spec, *s_latch, *s_latched, *s_expected, *s_sending, *s_receiver, *s_ssrc, *s_max_seq,
    *s_timeline, *s_tl_ssrc, *s_last_seen, *s_stats, *s_packets_in, *s_last_packet_at,
    *s_cycles, *s_received, *s_packets, *s_octets, *s_r_last_packet_at, *s_last_arrival,
    *s_clock_rate, *s_last_timestamp, *s_jitter, *s_d_sum, *s_d_count, *s_level_payloads,
    *s_append, *s_offset, *s_last, *s_last_at, *s_sender, *s_marker_pending, *s_sequence,
    *s_timestamp, *s_frame_ticks, *s_packets_out, *s_forwarded, *s_sent_since_report;

/* getattr as a C integer; -1 with an exception set on failure (check PyErr_Occurred) */
static int get_ll(PyObject *obj, PyObject *name, long long *out) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int set_ll(PyObject *obj, PyObject *name, long long value) {
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL) return -1;
    int r = PyObject_SetAttr(obj, name, v);
    Py_DECREF(v);
    return r;
}

static int add_ll(PyObject *obj, PyObject *name, long long delta) {
    long long v;
    if (get_ll(obj, name, &v) < 0) return -1;
    return set_ll(obj, name, v + delta);
}

static int set_double(PyObject *obj, PyObject *name, double value) {
    PyObject *v = PyFloat_FromDouble(value);
    if (v == NULL) return -1;
    int r = PyObject_SetAttr(obj, name, v);
    Py_DECREF(v);
    return r;
}

/* truthiness of an attribute: 1, 0, or -1 on error */
static int get_true(PyObject *obj, PyObject *name) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* whether an attribute is None: 1, 0, or -1 */
static int is_none(PyObject *obj, PyObject *name) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) return -1;
    int r = v == Py_None;
    Py_DECREF(v);
    return r;
}

#define TRY(expr) \
    do { \
        if ((expr) < 0) goto error; \
    } while (0)

static PyObject *relay_datagram(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "relay_datagram(leg, buf, view, addr, now)");
        return NULL;
    }
    PyObject *leg = args[0], *buf = args[1], *view = args[2], *addr = args[3];
    double now = PyFloat_AsDouble(args[4]);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    if (!PyByteArray_Check(buf)) {
        PyErr_SetString(PyExc_TypeError, "buf must be a bytearray");
        return NULL;
    }
    Py_ssize_t size = PyObject_Length(view);
    if (size < 0) return NULL;
    if (size > PyByteArray_GET_SIZE(buf)) {
        PyErr_SetString(PyExc_ValueError, "view longer than buf");
        return NULL;
    }
    unsigned char *p = (unsigned char *)PyByteArray_AS_STRING(buf);
    if (size <= FIXED || p[0] != 0x80) Py_RETURN_FALSE;

    /* every reference taken below is released at `done` */
    PyObject *targets = NULL, *target = NULL, *sink = NULL, *spec = NULL, *tspec = NULL,
             *latch = NULL, *latched = NULL, *tlatch = NULL, *destination = NULL,
             *receiver = NULL, *rssrc = NULL, *timeline = NULL, *tlssrc = NULL, *stats = NULL,
             *levels = NULL, *sender = NULL, *lstats = NULL, *result = NULL;
    PyObject *payload = NULL, *r = NULL;
    long long audio_pt, max_seq, v;
    int t;
    unsigned second = p[1];

    TRY(get_ll(leg, s_audio_pt, &audio_pt));
    if ((long long)(second & 0x7F) != audio_pt) goto decline;
    TRY(t = is_none(leg, s_srtp));
    if (!t) goto decline;
    TRY(t = get_true(leg, s_buffered));
    if (t) goto decline;
    TRY(t = get_true(leg, s_first));
    if (t) goto decline;
    targets = PyObject_GetAttr(leg, s_forward_to);
    if (targets == NULL) goto error;
    if (!PyList_Check(targets) || PyList_GET_SIZE(targets) != 1) goto decline;
    target = PyList_GET_ITEM(targets, 0);
    Py_INCREF(target);
    sink = PyObject_GetAttr(target, s_relay_sink);
    if (sink == NULL) goto error;
    if (sink == Py_None) goto decline;
    spec = PyObject_GetAttr(leg, s_spec);
    if (spec == NULL) goto error;
    tspec = PyObject_GetAttr(target, s_spec);
    if (tspec == NULL) goto error;
    if (spec != tspec) goto decline;
    latch = PyObject_GetAttr(leg, s_latch);
    if (latch == NULL) goto error;
    latched = PyObject_GetAttr(latch, s_latched);
    if (latched == NULL) goto error;
    TRY(t = PyObject_RichCompareBool(addr, latched, Py_EQ));
    if (!t) goto decline;
    TRY(t = is_none(target, s_srtp));
    if (!t) goto decline;
    TRY(t = get_true(target, s_sending));
    if (!t) goto decline;
    tlatch = PyObject_GetAttr(target, s_latch);
    if (tlatch == NULL) goto error;
    destination = PyObject_GetAttr(tlatch, s_latched);
    if (destination == NULL) goto error;
    if (destination == Py_None) {
        Py_DECREF(destination);
        destination = PyObject_GetAttr(tlatch, s_expected);
        if (destination == NULL) goto error;
        if (destination == Py_None) goto decline;
    }
    unsigned seq = ((unsigned)p[2] << 8) | p[3];
    uint32_t timestamp = ((uint32_t)p[4] << 24) | ((uint32_t)p[5] << 16) | ((uint32_t)p[6] << 8) | p[7];
    uint32_t ssrc = ((uint32_t)p[8] << 24) | ((uint32_t)p[9] << 16) | ((uint32_t)p[10] << 8) | p[11];
    receiver = PyObject_GetAttr(leg, s_receiver);
    if (receiver == NULL) goto error;
    rssrc = PyObject_GetAttr(receiver, s_ssrc);
    if (rssrc == NULL) goto error;
    if (rssrc == Py_None) goto decline;
    v = PyLong_AsLongLong(rssrc);
    if (v == -1 && PyErr_Occurred()) goto error;
    if (v != (long long)ssrc) goto decline;
    TRY(get_ll(receiver, s_max_seq, &max_seq));
    unsigned delta = (seq - (unsigned)max_seq) & 0xFFFF;
    if (!(delta > 0 && delta < MAX_DROPOUT)) goto decline;
    timeline = PyObject_GetAttr(target, s_timeline);
    if (timeline == NULL) goto error;
    tlssrc = PyObject_GetAttr(timeline, s_tl_ssrc);
    if (tlssrc == NULL) goto error;
    if (tlssrc == Py_None) goto decline;
    v = PyLong_AsLongLong(tlssrc);
    if (v == -1 && PyErr_Occurred()) goto error;
    if (v != (long long)ssrc) goto decline;

    /* -- accepted: the source's side. From here on only an error in the interpreter can stop
     * it (as an exception in the Python path would). */
    TRY(set_double(latch, s_last_seen, now));
    stats = PyObject_GetAttr(leg, s_stats);
    if (stats == NULL) goto error;
    TRY(add_ll(stats, s_packets_in, 1));
    TRY(set_double(leg, s_last_packet_at, now));
    if ((long long)seq < max_seq) TRY(add_ll(receiver, s_cycles, 0x10000));
    TRY(set_ll(receiver, s_max_seq, seq));
    TRY(add_ll(receiver, s_received, 1));
    TRY(add_ll(receiver, s_packets, 1));
    Py_ssize_t payload_size = size - FIXED;
    TRY(add_ll(receiver, s_octets, payload_size));
    TRY(set_double(receiver, s_r_last_packet_at, now));
    {
        PyObject *last_arrival = PyObject_GetAttr(receiver, s_last_arrival);
        if (last_arrival == NULL) goto error;
        if (last_arrival != Py_None) {
            double la = PyFloat_AsDouble(last_arrival);
            Py_DECREF(last_arrival);
            if (la == -1.0 && PyErr_Occurred()) goto error;
            long long clock_rate, last_ts, d_count;
            TRY(get_ll(receiver, s_clock_rate, &clock_rate));
            TRY(get_ll(receiver, s_last_timestamp, &last_ts));
            int64_t diff = (int64_t)(int32_t)(uint32_t)(timestamp - (uint32_t)last_ts);
            double d = (now - la) * (double)clock_rate - (double)diff;
            if (d < 0) d = -d;
            PyObject *jo = PyObject_GetAttr(receiver, s_jitter);
            if (jo == NULL) goto error;
            double jitter = PyFloat_AsDouble(jo);
            Py_DECREF(jo);
            if (jitter == -1.0 && PyErr_Occurred()) goto error;
            TRY(set_double(receiver, s_jitter, jitter + (d - jitter) / 16));
            PyObject *so = PyObject_GetAttr(receiver, s_d_sum);
            if (so == NULL) goto error;
            double dsum = PyFloat_AsDouble(so);
            Py_DECREF(so);
            if (dsum == -1.0 && PyErr_Occurred()) goto error;
            TRY(set_double(receiver, s_d_sum, dsum + d));
            TRY(get_ll(receiver, s_d_count, &d_count));
            TRY(set_ll(receiver, s_d_count, d_count + 1));
        } else {
            Py_DECREF(last_arrival);
        }
    }
    TRY(set_double(receiver, s_last_arrival, now));
    TRY(set_ll(receiver, s_last_timestamp, timestamp));
    levels = PyObject_GetAttr(leg, s_level_payloads);
    if (levels == NULL) goto error;
    if (levels != Py_None) {
        payload = PyBytes_FromStringAndSize((const char *)p + FIXED, payload_size);
        if (payload == NULL) goto error;
        r = PyObject_CallMethodOneArg(levels, s_append, payload);
        if (r == NULL) goto error;
        Py_CLEAR(r);
    }

    /* -- the listener's side */
    long long offset, sequence, packets, tssrc, out_pt, frame_ticks;
    TRY(get_ll(timeline, s_offset, &offset));
    uint32_t stamp = (uint32_t)(timestamp + (uint64_t)offset);
    TRY(set_ll(timeline, s_last, stamp));
    TRY(set_double(timeline, s_last_at, now));
    sender = PyObject_GetAttr(target, s_sender);
    if (sender == NULL) goto error;
    TRY(t = get_true(sender, s_marker_pending));
    if (t) {
        second |= 0x80;
        if (PyObject_SetAttr(sender, s_marker_pending, Py_False) < 0) goto error;
    }
    TRY(get_ll(sender, s_sequence, &sequence));
    TRY(get_ll(sender, s_ssrc, &tssrc));
    TRY(get_ll(target, s_audio_pt, &out_pt));
    TRY(get_ll(target, s_frame_ticks, &frame_ticks));
    p[0] = 0x80;
    p[1] = (unsigned char)((second & 0x80) | (out_pt & 0x7F));
    p[2] = (unsigned char)(sequence >> 8);
    p[3] = (unsigned char)sequence;
    p[4] = (unsigned char)(stamp >> 24);
    p[5] = (unsigned char)(stamp >> 16);
    p[6] = (unsigned char)(stamp >> 8);
    p[7] = (unsigned char)stamp;
    p[8] = (unsigned char)(tssrc >> 24);
    p[9] = (unsigned char)(tssrc >> 16);
    p[10] = (unsigned char)(tssrc >> 8);
    p[11] = (unsigned char)tssrc;
    TRY(set_ll(sender, s_sequence, (sequence + 1) & 0xFFFF));
    TRY(set_ll(sender, s_timestamp, (uint32_t)(stamp + (uint64_t)frame_ticks)));
    TRY(get_ll(sender, s_packets, &packets));
    TRY(set_ll(sender, s_packets, packets + 1));
    TRY(add_ll(sender, s_octets, payload_size));
    {
        PyObject *call_args[2] = {view, destination};
        r = PyObject_Vectorcall(sink, call_args, 2, NULL);
        if (r == NULL) goto error;
        Py_CLEAR(r);
    }
    lstats = PyObject_GetAttr(target, s_stats);
    if (lstats == NULL) goto error;
    TRY(add_ll(lstats, s_packets_out, 1));
    TRY(add_ll(lstats, s_forwarded, 1));
    if (PyObject_SetAttr(target, s_sent_since_report, Py_True) < 0) goto error;
    result = Py_True;
    Py_INCREF(result);
    goto done;
decline:
    result = Py_False;
    Py_INCREF(result);
    goto done;
error:
    result = NULL;
done:
    Py_XDECREF(targets);
    Py_XDECREF(target);
    Py_XDECREF(sink);
    Py_XDECREF(spec);
    Py_XDECREF(tspec);
    Py_XDECREF(latch);
    Py_XDECREF(latched);
    Py_XDECREF(tlatch);
    Py_XDECREF(destination);
    Py_XDECREF(receiver);
    Py_XDECREF(rssrc);
    Py_XDECREF(timeline);
    Py_XDECREF(tlssrc);
    Py_XDECREF(stats);
    Py_XDECREF(levels);
    Py_XDECREF(sender);
    Py_XDECREF(lstats);
    Py_XDECREF(payload);
    return result;
}

static PyMethodDef methods[] = {
    {"relay_datagram", (PyCFunction)(void (*)(void))relay_datagram, METH_FASTCALL,
     "relay_datagram(leg, buf, view, addr, now) -> bool: media/relay.py's, compiled."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_relay", "The relay's fast path compiled (media/relay.py).", -1,
    methods,
};

#define INTERN(var, text) \
    do { \
        var = PyUnicode_InternFromString(text); \
        if (var == NULL) return NULL; \
    } while (0)

PyMODINIT_FUNC PyInit__relay(void) {
    INTERN(s_audio_pt, "audio_pt");
    INTERN(s_srtp, "srtp");
    INTERN(s_buffered, "buffered");
    INTERN(s_first, "_first");
    INTERN(s_forward_to, "forward_to");
    INTERN(s_relay_sink, "relay_sink");
    INTERN(s_spec, "spec");
    INTERN(s_latch, "latch");
    INTERN(s_latched, "_latched");
    INTERN(s_expected, "expected");
    INTERN(s_sending, "sending");
    INTERN(s_receiver, "receiver");
    INTERN(s_ssrc, "ssrc");
    INTERN(s_max_seq, "_max_seq");
    INTERN(s_timeline, "timeline");
    INTERN(s_tl_ssrc, "_ssrc");
    INTERN(s_last_seen, "_last_seen");
    INTERN(s_stats, "stats");
    INTERN(s_packets_in, "packets_in");
    INTERN(s_last_packet_at, "last_packet_at");
    INTERN(s_cycles, "_cycles");
    INTERN(s_received, "_received");
    INTERN(s_packets, "_packets");
    INTERN(s_octets, "_octets");
    INTERN(s_r_last_packet_at, "_last_packet_at");
    INTERN(s_last_arrival, "_last_arrival");
    INTERN(s_clock_rate, "clock_rate");
    INTERN(s_last_timestamp, "_last_timestamp");
    INTERN(s_jitter, "_jitter");
    INTERN(s_d_sum, "_d_sum");
    INTERN(s_d_count, "_d_count");
    INTERN(s_level_payloads, "_level_payloads");
    INTERN(s_append, "append");
    INTERN(s_offset, "_offset");
    INTERN(s_last, "last");
    INTERN(s_last_at, "last_at");
    INTERN(s_sender, "sender");
    INTERN(s_marker_pending, "_marker_pending");
    INTERN(s_sequence, "_sequence");
    INTERN(s_timestamp, "_timestamp");
    INTERN(s_frame_ticks, "frame_ticks");
    INTERN(s_packets_out, "packets_out");
    INTERN(s_forwarded, "forwarded");
    INTERN(s_sent_since_report, "_sent_since_report");
    return PyModule_Create(&module);
}
