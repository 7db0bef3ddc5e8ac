/* The head of a SIP message cut in C: the common case of sip/message.py's `parse_message`.
 *
 * `parse_head(data, stream)` does what `_split_lines`, `_parse_start_line` and `_index_lines` do for a
 * message of the shape nearly every peer sends - ASCII, every line ended by CRLF, no folded
 * line, no leading CRLF, no line over MAX_LINE, at most MAX_HEADERS header lines - and returns
 * the same objects: (method, Uri, items, index, body_start, body_end) for a request, (status,
 * reason, items, index, body_start, body_end) for a response, the body cut as `_with_body` cuts
 * it (Content-Length, or the rest of a datagram). The structured parts stay in Python: the
 * request URI is parsed by `parse_uri`, a header name not yet seen by `_header_name` (both are
 * called from here, in the order the Python parser calls them, so that a message malformed in
 * two places raises the same error), and the caches (`_NAMES`, `_LINES`, `_METHODS`) are the
 * Python parser's own dictionaries, shared.
 *
 * Anything else - a non-ASCII byte, a control character other than HTAB, a CR not followed by
 * LF or a LF not preceded by CR, a folded or empty first line, a start line or header line the
 * grammar refuses, too many lines, a message over MAX_MESSAGE, a Content-Length that is not
 * one plain number the datagram holds, a body over MAX_BODY - returns None, and the caller
 * parses the message in Python from scratch, which handles it or raises the right
 * SipProtocolError. So the errors are the Python parser's by construction; what is done here is
 * only ever done for input the Python parser accepts the same way (tests/sip/
 * test_message_c.py runs both on a corpus and on mutations and compares).
 *
 * Hostile input: one pass over at most MAX_MESSAGE bytes finds the lines (never reading past
 * the buffer), then one pass over the lines; work is linear in the input, and memory bounded
 * by the caches' own bounds (kept as the Python side keeps them).
 */
#define _GNU_SOURCE /* memmem */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>
#include <strings.h> /* strncasecmp */

#define MAX_LINES_HEAD 130 /* the start line and MAX_HEADERS (128) header lines, plus one */

/* Set by configure(): the Python parser's caches, helpers and limits. */
static PyObject *names_cache;   /* raw name -> (canonical, key) */
static PyObject *lines_cache;   /* line -> (item, key, alone) */
static PyObject *methods_cache; /* method -> method */
static PyObject *varying_keys;  /* keys whose lines are not kept */
static PyObject *header_name_fn;
static PyObject *parse_uri_fn;
static Py_ssize_t max_message, max_line, max_headers, max_lines_kept, line_kept, max_methods;
static Py_ssize_t max_body;

/* The lines cache's entries found by the bytes of their line (issue 18): a header line seen
 * before (Max-Forwards, Contact, a CSeq of "1 INVITE"...) is then found without a str made of
 * it, hashed with SipHash and looked up in `lines_cache`, for each message. A front for that
 * dictionary: an entry is added here when the dictionary has it (the same line, the same
 * parsed tuple), and all are dropped when the dictionary holds fewer lines than this table (it
 * was cleared: by its bound, or by a test) or is cleared here. (Cleared by the Python parser and
 * filled again past this table's count before the next message cut here, the dictionary may
 * lack lines this table still has: each still the right parse of its line, and this table has
 * its own bound, max_lines_kept.) Open addressing with at most LINE_PROBES slots looked at per
 * lookup, on a hash seeded per process: a peer that makes lines collide makes them miss here
 * (and go to the dictionary), never a lookup longer. */
#define LINE_SLOTS 8192 /* a power of two, at least twice max_lines_kept (configure checks) */
#define LINE_PROBES 8
static struct line_slot {
    uint64_t hash;
    PyObject *line;   /* the dictionary's key (an ASCII str), NULL: an empty slot */
    PyObject *parsed; /* its value: (item, key, alone) */
} line_slots[LINE_SLOTS];
static Py_ssize_t line_slots_used;
static uint64_t line_seed;

static uint64_t line_hash(const char *p, Py_ssize_t n) {
    uint64_t h = line_seed ^ ((uint64_t)n * 0x9E3779B97F4A7C15ULL);
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }
    if (n > 0) {
        uint64_t w = 0;
        memcpy(&w, p, (size_t)n);
        h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL;
        h ^= h >> 32;
    }
    h *= 0x9E3779B97F4A7C15ULL;
    return h ^ (h >> 29);
}

static void line_slots_clear(void) {
    if (line_slots_used == 0)
        return;
    for (size_t i = 0; i < LINE_SLOTS; i++) {
        Py_CLEAR(line_slots[i].line);
        Py_CLEAR(line_slots[i].parsed);
    }
    line_slots_used = 0;
}

/* The parsed tuple of the line of n bytes at p (borrowed), or NULL: not here. */
static PyObject *line_slots_find(const char *p, Py_ssize_t n, uint64_t h) {
    for (size_t i = 0; i < LINE_PROBES; i++) {
        struct line_slot *slot = &line_slots[(h + i) & (LINE_SLOTS - 1)];
        if (slot->line == NULL)
            return NULL;
        if (slot->hash == h && PyUnicode_GET_LENGTH(slot->line) == n &&
            memcmp(PyUnicode_DATA(slot->line), p, (size_t)n) == 0)
            return slot->parsed;
    }
    return NULL;
}

/* `line` -> `parsed`, an entry of the dictionary, kept here too when there is room. */
static void line_slots_add(uint64_t h, PyObject *line, PyObject *parsed) {
    if (line_slots_used >= max_lines_kept)
        line_slots_clear();
    for (size_t i = 0; i < LINE_PROBES; i++) {
        struct line_slot *slot = &line_slots[(h + i) & (LINE_SLOTS - 1)];
        if (slot->line == NULL) {
            slot->hash = h;
            slot->line = Py_NewRef(line);
            slot->parsed = Py_NewRef(parsed);
            line_slots_used++;
            return;
        }
    }
}

/* The names, as received, of the headers that differ in every call and so are never in the
 * lines cache (`_VARYING`): found by their bytes, with what `_header_name` made of them at
 * configure(), the line then cut without a string made for it or a lookup that would miss. */
static struct {
    const char *raw;
    size_t len;
    PyObject *known; /* (canonical, key) */
} varying_names[] = {
    {"Via", 3, NULL},  {"v", 1, NULL}, {"From", 4, NULL},    {"f", 1, NULL},
    {"To", 2, NULL},   {"t", 1, NULL}, {"Call-ID", 7, NULL}, {"i", 1, NULL},
};
#define N_VARYING_NAMES (sizeof varying_names / sizeof varying_names[0])

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *names, *lines, *methods, *varying, *header_name, *parse_uri;
    Py_ssize_t mm, ml, mh, mlk, lk, mme, mb;
    if (!PyArg_ParseTuple(args, "O!O!O!OOOnnnnnnn", &PyDict_Type, &names, &PyDict_Type, &lines,
                          &PyDict_Type, &methods, &varying, &header_name, &parse_uri, &mm, &ml,
                          &mh, &mlk, &lk, &mme, &mb))
        return NULL;
    if (mh + 2 > MAX_LINES_HEAD) {
        PyErr_SetString(PyExc_ValueError, "max_headers above what parse_head can hold");
        return NULL;
    }
    Py_INCREF(names);
    Py_XSETREF(names_cache, names);
    Py_INCREF(lines);
    Py_XSETREF(lines_cache, lines);
    Py_INCREF(methods);
    Py_XSETREF(methods_cache, methods);
    Py_INCREF(varying);
    Py_XSETREF(varying_keys, varying);
    Py_INCREF(header_name);
    Py_XSETREF(header_name_fn, header_name);
    Py_INCREF(parse_uri);
    Py_XSETREF(parse_uri_fn, parse_uri);
    max_message = mm;
    max_line = ml;
    max_headers = mh;
    max_lines_kept = mlk;
    line_kept = lk;
    max_methods = mme;
    max_body = mb;
    if (mlk < 0 || mlk > LINE_SLOTS / 2) {
        PyErr_SetString(PyExc_ValueError, "max_lines_kept above what the line slots can hold");
        return NULL;
    }
    line_slots_clear();
    for (size_t i = 0; i < N_VARYING_NAMES; i++) {
        PyObject *raw = PyUnicode_FromStringAndSize(varying_names[i].raw,
                                                    (Py_ssize_t)varying_names[i].len);
        if (raw == NULL)
            return NULL;
        PyObject *known = PyObject_CallFunctionObjArgs(header_name, raw, raw, NULL);
        Py_DECREF(raw);
        if (known == NULL)
            return NULL;
        int vary = PyTuple_Check(known) && PyTuple_GET_SIZE(known) == 2
                       ? PySet_Contains(varying, PyTuple_GET_ITEM(known, 1))
                       : 0;
        if (vary < 0) {
            Py_DECREF(known);
            return NULL;
        }
        if (!vary) /* not varying after all: such a line goes through the cache */
            Py_CLEAR(known);
        Py_XSETREF(varying_names[i].known, known);
    }
    Py_RETURN_NONE;
}

/* An ASCII str of n bytes (the caller checked every byte is below 0x80). */
static PyObject *ascii(const char *p, Py_ssize_t n) {
    PyObject *s = PyUnicode_New(n, 127);
    if (s != NULL)
        memcpy(PyUnicode_DATA(s), p, (size_t)n);
    return s;
}

/* RFC 3261 s25 token, as message.py's _TOKEN: alphanum / "-" / "." / "!" / "%" / "*" / "_" /
 * "+" / "`" / "'" / "~" */
/* `t`, a new tuple of str, None, int or such untracked tuples only, out of the cyclic garbage
 * collector's lists (NULL passed through): no cycle can run through it, and the collector would
 * untrack it at its first collection anyway (_PyTuple_MaybeUntrack) - after walking it there, and
 * in every young collection until then. A message kept for a transaction's 32 s linger is mostly
 * such pairs: untracked at birth, the collections walk a third of the objects a call keeps
 * (issue 18). */
static PyObject *untracked(PyObject *t) {
    if (t != NULL)
        PyObject_GC_UnTrack(t);
    return t;
}

static int is_token_char(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '!' || c == '%' || c == '*' || c == '_' || c == '+' ||
           c == '`' || c == '\'' || c == '~';
}

/* The start line: a new reference to (first, second) for the result, NULL with an exception
 * set, or NULL without one for "not the common case" (the caller returns None). */
static int start_line(const char *p, Py_ssize_t n, PyObject **first, PyObject **second) {
    *first = *second = NULL;
    if (n >= 4 && memcmp(p, "SIP/", 4) == 0) {
        /* SIP/2\.0 ([1-6][0-9][0-9]) ([^\r\n]*) */
        if (n < 12 || memcmp(p, "SIP/2.0 ", 8) != 0 || p[8] < '1' || p[8] > '6' ||
            p[9] < '0' || p[9] > '9' || p[10] < '0' || p[10] > '9' || p[11] != ' ')
            return 0;
        *first = PyLong_FromLong((p[8] - '0') * 100 + (p[9] - '0') * 10 + (p[10] - '0'));
        if (*first == NULL)
            return -1;
        *second = ascii(p + 12, n - 12);
        if (*second == NULL) {
            Py_CLEAR(*first);
            return -1;
        }
        return 1;
    }
    /* Method SP Request-URI SP SIP-Version: exactly two spaces */
    const char *sp1 = memchr(p, ' ', (size_t)n);
    if (sp1 == NULL)
        return 0;
    const char *sp2 = memchr(sp1 + 1, ' ', (size_t)(p + n - sp1 - 1));
    if (sp2 == NULL || memchr(sp2 + 1, ' ', (size_t)(p + n - sp2 - 1)) != NULL)
        return 0;
    Py_ssize_t mlen = sp1 - p;
    if (mlen == 0)
        return 0;
    PyObject *method = ascii(p, mlen);
    if (method == NULL)
        return -1;
    PyObject *known = PyDict_GetItemWithError(methods_cache, method); /* borrowed */
    if (known != NULL) {
        Py_INCREF(known);
        Py_SETREF(method, known);
    } else if (PyErr_Occurred()) {
        Py_DECREF(method);
        return -1;
    } else {
        for (Py_ssize_t i = 0; i < mlen; i++)
            if (!is_token_char((unsigned char)p[i])) {
                Py_DECREF(method);
                return 0;
            }
        if (PyDict_GET_SIZE(methods_cache) >= max_methods)
            PyDict_Clear(methods_cache);
        if (PyDict_SetItem(methods_cache, method, method) < 0) {
            Py_DECREF(method);
            return -1;
        }
    }
    /* the version as sent: anything but the exact text (another case, another version) is
     * for the Python parser, which accepts the first and answers 505 to the second */
    if (p + n - sp2 - 1 != 7 || memcmp(sp2 + 1, "SIP/2.0", 7) != 0) {
        Py_DECREF(method);
        return 0;
    }
    PyObject *uri_text = ascii(sp1 + 1, sp2 - sp1 - 1);
    if (uri_text == NULL) {
        Py_DECREF(method);
        return -1;
    }
    PyObject *uri = PyObject_CallOneArg(parse_uri_fn, uri_text);
    Py_DECREF(uri_text);
    if (uri == NULL) {
        Py_DECREF(method);
        return -1;
    }
    *first = method;
    *second = uri;
    return 1;
}

/* What the header lines said of the body: the first Content-Length value (borrowed: the items
 * list holds it), and whether a later one differs. */
typedef struct {
    PyObject *length;
    int conflict;
} body_state;

static int is_content_length(PyObject *key) {
    return PyUnicode_IS_COMPACT_ASCII(key) && PyUnicode_GET_LENGTH(key) == 14 &&
           memcmp(PyUnicode_DATA(key), "content-length", 14) == 0;
}

/* The line cut: a new reference to (canonical, key) and the stripped value. */
static PyObject *strip_value(const char *colon, const char *end) {
    /* value.strip(): within these lines the only whitespace is SP and HTAB */
    const char *v = colon + 1;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    return ascii(v, end - v);
}

/* One header line into items and index; 1 done, 0 not the common case, -1 an exception. */
static int header_line(const char *p, Py_ssize_t n, PyObject *items, PyObject *index,
                       body_state *body) {
    PyObject *item = NULL, *key = NULL, *alone = NULL; /* new references below */
    const char *colon = memchr(p, ':', (size_t)n);
    PyObject *fast = NULL; /* borrowed: a varying header's (canonical, key) */
    if (colon != NULL)
        for (size_t i = 0; i < N_VARYING_NAMES; i++)
            if ((size_t)(colon - p) == varying_names[i].len &&
                memcmp(p, varying_names[i].raw, varying_names[i].len) == 0) {
                fast = varying_names[i].known;
                break;
            }
    if (fast != NULL) {
        key = PyTuple_GET_ITEM(fast, 1);
        Py_INCREF(key);
        PyObject *value = strip_value(colon, p + n);
        if (value == NULL)
            goto fail;
        item = untracked(PyTuple_Pack(2, PyTuple_GET_ITEM(fast, 0), value));
        alone = untracked(PyTuple_Pack(1, value));
        Py_DECREF(value);
        if (item == NULL || alone == NULL)
            goto fail;
        goto add;
    }
    uint64_t hash = line_hash(p, n);
    PyObject *parsed = line_slots_find(p, n, hash); /* borrowed */
    if (parsed != NULL) {
        item = PyTuple_GET_ITEM(parsed, 0);
        key = PyTuple_GET_ITEM(parsed, 1);
        alone = PyTuple_GET_ITEM(parsed, 2);
        Py_INCREF(item);
        Py_INCREF(key);
        Py_INCREF(alone);
        goto add;
    }
    PyObject *line = ascii(p, n);
    if (line == NULL)
        return -1;
    parsed = PyDict_GetItemWithError(lines_cache, line); /* borrowed */
    if (parsed != NULL && PyTuple_CheckExact(parsed) && PyTuple_GET_SIZE(parsed) == 3) {
        item = PyTuple_GET_ITEM(parsed, 0);
        key = PyTuple_GET_ITEM(parsed, 1);
        alone = PyTuple_GET_ITEM(parsed, 2);
        Py_INCREF(item);
        Py_INCREF(key);
        Py_INCREF(alone);
        if (n <= line_kept)
            line_slots_add(hash, line, parsed);
        Py_DECREF(line);
        goto add;
    }
    if (parsed == NULL && PyErr_Occurred()) {
        Py_DECREF(line);
        return -1;
    }
    if (colon == NULL) {
        Py_DECREF(line);
        return 0;
    }
    PyObject *raw = ascii(p, colon - p);
    if (raw == NULL) {
        Py_DECREF(line);
        return -1;
    }
    PyObject *known = PyDict_GetItemWithError(names_cache, raw); /* borrowed */
    if (known != NULL)
        Py_INCREF(known);
    else if (!PyErr_Occurred())
        known = PyObject_CallFunctionObjArgs(header_name_fn, raw, line, NULL);
    Py_DECREF(raw);
    if (known == NULL) {
        Py_DECREF(line);
        return -1;
    }
    if (!PyTuple_Check(known) || PyTuple_GET_SIZE(known) != 2) {
        Py_DECREF(known);
        Py_DECREF(line);
        PyErr_SetString(PyExc_TypeError, "a header name is (canonical, key)");
        return -1;
    }
    key = PyTuple_GET_ITEM(known, 1);
    Py_INCREF(key);
    PyObject *value = strip_value(colon, p + n);
    if (value != NULL) {
        item = untracked(PyTuple_Pack(2, PyTuple_GET_ITEM(known, 0), value));
        alone = untracked(PyTuple_Pack(1, value));
        Py_DECREF(value);
    }
    Py_DECREF(known);
    if (item == NULL || alone == NULL) {
        Py_DECREF(line);
        goto fail;
    }
    int vary = PySet_Contains(varying_keys, key);
    if (vary < 0) {
        Py_DECREF(line);
        goto fail;
    }
    if (!vary && n <= line_kept) {
        if (PyDict_GET_SIZE(lines_cache) >= max_lines_kept) {
            PyDict_Clear(lines_cache);
            line_slots_clear();
        }
        PyObject *entry = PyTuple_Pack(3, item, key, alone);
        if (entry == NULL || PyDict_SetItem(lines_cache, line, entry) < 0) {
            Py_XDECREF(entry);
            Py_DECREF(line);
            goto fail;
        }
        line_slots_add(hash, line, entry);
        Py_DECREF(entry);
    }
    Py_DECREF(line);

add:
    if (PyList_Append(items, item) < 0)
        goto fail;
    PyObject *lines_of = PyDict_GetItemWithError(index, key); /* borrowed */
    if (lines_of == NULL) {
        if (PyErr_Occurred() || PyDict_SetItem(index, key, alone) < 0)
            goto fail;
    } else {
        /* (*lines_of, item[1]) */
        Py_ssize_t k = PyTuple_GET_SIZE(lines_of);
        PyObject *grown = PyTuple_New(k + 1);
        if (grown == NULL)
            goto fail;
        for (Py_ssize_t i = 0; i < k; i++) {
            PyObject *o = PyTuple_GET_ITEM(lines_of, i);
            Py_INCREF(o);
            PyTuple_SET_ITEM(grown, i, o);
        }
        PyObject *value = PyTuple_GET_ITEM(item, 1);
        Py_INCREF(value);
        PyTuple_SET_ITEM(grown, k, value);
        untracked(grown);
        int set = PyDict_SetItem(index, key, grown);
        Py_DECREF(grown);
        if (set < 0)
            goto fail;
    }
    if (is_content_length(key)) {
        PyObject *value = PyTuple_GET_ITEM(item, 1); /* items holds it */
        if (body->length == NULL)
            body->length = value;
        else if (PyUnicode_Compare(value, body->length) != 0)
            body->conflict = 1;
    }
    Py_DECREF(item);
    Py_DECREF(key);
    Py_DECREF(alone);
    return 1;
fail:
    Py_XDECREF(item);
    Py_XDECREF(key);
    Py_XDECREF(alone);
    return -1;
}

static PyObject *parse_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "parse_head takes (bytes, stream)");
        return NULL;
    }
    PyObject *arg = args[0];
    int stream = PyObject_IsTrue(args[1]);
    if (stream < 0)
        return NULL;
    if (names_cache == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "parse_head before configure");
        return NULL;
    }
    const char *data = PyBytes_AS_STRING(arg);
    Py_ssize_t size = PyBytes_GET_SIZE(arg);
    if (size > max_message)
        Py_RETURN_NONE;
    if (line_slots_used > PyDict_GET_SIZE(lines_cache))
        line_slots_clear(); /* the lines cache was cleared since: so are its entries here */

    /* One pass: the lines of the head up to the first empty one. */
    Py_ssize_t starts[MAX_LINES_HEAD], lens[MAX_LINES_HEAD];
    Py_ssize_t nlines = 0, start = 0, i = 0, body = -1;
    while (i < size) {
        /* eight bytes at a time while none is below 0x20 or above 0x7f (a byte below 0x20
         * borrows in the subtraction and sets its top bit; the first such byte always does) */
        while (i + 8 <= size) {
            uint64_t w;
            memcpy(&w, data + i, 8);
            if (((w - 0x2020202020202020ULL) | w) & 0x8080808080808080ULL)
                break;
            i += 8;
        }
        if (i >= size)
            break;
        unsigned char c = (unsigned char)data[i];
        if (c >= 0x80)
            Py_RETURN_NONE;
        if (c >= 0x20 || c == '\t') {
            i++;
            continue;
        }
        if (c != '\r' || i + 1 >= size || data[i + 1] != '\n')
            Py_RETURN_NONE; /* a control character, a bare CR, a bare LF */
        if (i == start) {   /* an empty line: the end of the head */
            body = i + 2;
            break;
        }
        if (nlines == MAX_LINES_HEAD || i - start > max_line)
            Py_RETURN_NONE;
        if (data[start] == ' ' || data[start] == '\t')
            Py_RETURN_NONE; /* a folded line (or a first line beginning with a blank) */
        starts[nlines] = start;
        lens[nlines] = i - start;
        nlines++;
        i += 2;
        start = i;
    }
    /* no end of headers, or an empty first line (leading CRLF, or no head at all) */
    if (body < 0 || nlines == 0 || nlines - 1 > max_headers)
        Py_RETURN_NONE;

    PyObject *first, *second;
    int ok = start_line(data + starts[0], lens[0], &first, &second);
    if (ok < 0)
        return NULL;
    if (ok == 0)
        Py_RETURN_NONE;
    /* the index sized for its lines at once (no resize on the way), where the API has it */
#if PY_VERSION_HEX < 0x030D0000
    PyObject *items = PyList_New(0), *index = _PyDict_NewPresized(nlines - 1);
#else
    PyObject *items = PyList_New(0), *index = PyDict_New();
#endif
    if (items == NULL || index == NULL)
        goto fail;
    body_state state = {NULL, 0};
    for (Py_ssize_t l = 1; l < nlines; l++) {
        ok = header_line(data + starts[l], lens[l], items, index, &state);
        if (ok < 0)
            goto fail;
        if (ok == 0)
            goto not_common;
    }
    /* The body, as `_with_body` cuts it; its refusals are left to the Python parser. */
    Py_ssize_t end = size;
    if (state.length != NULL) {
        if (state.conflict || !PyUnicode_IS_COMPACT_ASCII(state.length))
            goto not_common;
        const char *digits = (const char *)PyUnicode_DATA(state.length);
        Py_ssize_t ndigits = PyUnicode_GET_LENGTH(state.length), length = 0;
        if (ndigits == 0 || ndigits > 9)
            goto not_common;
        for (Py_ssize_t d = 0; d < ndigits; d++) {
            if (digits[d] < '0' || digits[d] > '9')
                goto not_common;
            length = length * 10 + (digits[d] - '0');
        }
        if (length > size - body)
            goto not_common;
        end = body + length;
    } else if (stream) {
        goto not_common;
    }
    if (end - body > max_body)
        goto not_common;
    PyObject *result = PyTuple_New(6), *start_at = PyLong_FromSsize_t(body),
             *end_at = PyLong_FromSsize_t(end);
    if (result == NULL || start_at == NULL || end_at == NULL) {
        Py_XDECREF(result);
        Py_XDECREF(start_at);
        Py_XDECREF(end_at);
        goto fail;
    }
    PyTuple_SET_ITEM(result, 0, first);
    PyTuple_SET_ITEM(result, 1, second);
    PyTuple_SET_ITEM(result, 2, items);
    PyTuple_SET_ITEM(result, 3, index);
    PyTuple_SET_ITEM(result, 4, start_at);
    PyTuple_SET_ITEM(result, 5, end_at);
    return result;
not_common:
    Py_DECREF(first);
    Py_DECREF(second);
    Py_DECREF(items);
    Py_DECREF(index);
    Py_RETURN_NONE;
fail:
    Py_DECREF(first);
    Py_DECREF(second);
    Py_XDECREF(items);
    Py_XDECREF(index);
    return NULL;
}

/* Whether bytes.strip strips this byte (ASCII whitespace). */
static int blank(unsigned char c) { return c == ' ' || (c >= 9 && c <= 13); }

/* sip/trace.py's Call-ID of a message, the common case: its canonical spelling
 * ("\r\nCall-ID: ") found in the head. The Call-ID's bytes, stripped; None for anything else
 * (another spelling, no Call-ID, the canonical one only in the body), which trace.py looks for
 * with its regular expression. */
static PyObject *call_id(PyObject *self, PyObject *arg) {
    static const char name[] = "Call-ID: ";
    const size_t nlen = sizeof name - 1;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "call_id takes bytes");
        return NULL;
    }
    const char *data = PyBytes_AS_STRING(arg);
    const char *end = data + PyBytes_GET_SIZE(arg);
    /* From line end to line end (memchr, not memmem: a search for a LF skips a line at a
     * time, issue 18): the first "\r\nCall-ID: " - whose LF is one of those - unless a
     * "\r\n\r\n" ends at or before its LF (the head ended first: the header is in the body). */
    const char *lf = data;
    while ((lf = memchr(lf, '\n', (size_t)(end - lf))) != NULL) {
        if (lf - data >= 3 && memcmp(lf - 3, "\r\n\r", 3) == 0)
            Py_RETURN_NONE;
        if (lf > data && lf[-1] == '\r' && (size_t)(end - lf - 1) >= nlen &&
            memcmp(lf + 1, name, nlen) == 0)
            break;
        lf++;
    }
    if (lf == NULL)
        Py_RETURN_NONE;
    const char *start = lf + 1 + nlen;
    const char *stop = memmem(start, (size_t)(end - start), "\r\n", 2);
    if (stop == NULL)
        stop = end;
    while (start < stop && blank((unsigned char)*start))
        start++;
    while (stop > start && blank((unsigned char)stop[-1]))
        stop--;
    return PyBytes_FromStringAndSize(start, stop - start);
}

/* sip/headers.py's `parse_params` of the text from `semi` (a ";", or NULL: none) to `end` on its
 * fast path - printable ASCII, no blank, no quote - as a new tuple of (name, value or None);
 * Py_None (a new reference) for anything else, which the Python function parses or refuses (an
 * empty parameter, a name not a token, an empty value after "="), NULL with an exception. */
static PyObject *fast_params(const char *semi, const char *end) {
    Py_ssize_t count = 0;
    if (semi != NULL) {
        for (const char *c = semi + 1; c < end; c++) {
            if (*c <= ' ' || *c > '~' || *c == '"')
                Py_RETURN_NONE;
            count += *c == ';';
        }
        count += semi + 1 < end; /* ";" alone: no parameter */
    }
    PyObject *params = PyTuple_New(count);
    if (params == NULL)
        return NULL;
    const char *item = semi == NULL ? end : semi + 1;
    for (Py_ssize_t i = 0; i < count; i++) {
        const char *item_end = memchr(item, ';', (size_t)(end - item));
        if (item_end == NULL)
            item_end = end;
        const char *eq = memchr(item, '=', (size_t)(item_end - item));
        const char *name_end = eq == NULL ? item_end : eq;
        if (name_end == item || (eq != NULL && eq + 1 == item_end))
            goto not_plain; /* an empty parameter, name or value */
        for (const char *c = item; c < name_end; c++)
            if (!is_token_char((unsigned char)*c))
                goto not_plain;
        PyObject *name = ascii(item, name_end - item);
        PyObject *value = eq == NULL ? Py_NewRef(Py_None) : ascii(eq + 1, item_end - eq - 1);
        PyObject *pair =
            name != NULL && value != NULL ? untracked(PyTuple_Pack(2, name, value)) : NULL;
        Py_XDECREF(name);
        Py_XDECREF(value);
        if (pair == NULL) {
            Py_DECREF(params);
            return NULL;
        }
        PyTuple_SET_ITEM(params, i, pair);
        item = item_end + 1;
    }
    return untracked(params);
not_plain:
    Py_DECREF(params);
    Py_RETURN_NONE;
}

/* The display name of `"..."` from `p` (its opening quote) to `closing` (its closing quote), as
 * sip/headers.py's `unquote` makes it: each quoted-pair (`\x`) replaced by its `x`. */
static PyObject *unquoted(const char *p, const char *closing, Py_ssize_t escapes) {
    PyObject *s = PyUnicode_New(closing - p - 1 - escapes, 127);
    if (s == NULL)
        return NULL;
    char *out = (char *)PyUnicode_DATA(s);
    for (const char *c = p + 1; c < closing; c++) {
        if (*c == '\\')
            c++;
        *out++ = *c;
    }
    return s;
}

/* sip/headers.py's `_parse_address` of the address nearly every peer sends: a name-addr,
 * `Name <uri>;params`, `"Quoted Name" <uri>;params` or `<uri>;params`, or an addr-spec without
 * blanks, `sip:user@host;params` - printable ASCII, the display name of tokens and spaces or a
 * quoted-string, nothing between ">" and the parameters, the parameters on `parse_params`'s
 * fast path: (display name or None, the URI's text, params), the URI left to `parse_uri`.
 *
 * RFC 3261 s25.1: display-name = *(token LWS) / quoted-string; quoted-string = SWS DQUOTE
 * *(qdtext / quoted-pair) DQUOTE; qdtext = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII;
 * quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F); LAQUOT = SWS "<". The display name of a
 * quoted-string is returned as the Python function returns it: without its quotes, each `\x`
 * made `x` (`unquote`). Inside the quotes this takes the printable ASCII characters and the tab
 * only (after a backslash too); between the closing quote and "<", spaces and tabs.
 *
 * None for anything else (a non-ASCII or control character, an unterminated quote, blanks
 * around the URI or after it, "*"...), which the Python function parses or refuses
 * (tests/sip/test_message_c.py compares both on a table of hostile inputs, the corpus and
 * mutations of it). */
static PyObject *name_addr(PyObject *self, PyObject *arg) {
    if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "name_addr takes str");
        return NULL;
    }
    if (!PyUnicode_IS_COMPACT_ASCII(arg))
        Py_RETURN_NONE;
    const char *p = (const char *)PyUnicode_DATA(arg);
    Py_ssize_t n = PyUnicode_GET_LENGTH(arg);
    if (n == 0 || p[0] <= ' ' || p[n - 1] <= ' ') /* strip() would cut it: Python */
        Py_RETURN_NONE;
    const char *end = p + n;
    const char *lt, *closing = NULL; /* closing: the closing quote of a quoted display name */
    Py_ssize_t escapes = 0;
    if (p[0] == '"') {
        const char *c = p + 1;
        for (;; c++) {
            if (c >= end) /* unterminated: Python's error */
                Py_RETURN_NONE;
            if (*c == '"')
                break;
            if (*c == '\\') { /* a quoted-pair: the next character, whatever it is */
                c++;
                escapes++;
                if (c >= end) /* a backslash last: unterminated */
                    Py_RETURN_NONE;
            }
            if (*c != '\t' && (*c < ' ' || *c > '~'))
                Py_RETURN_NONE;
        }
        closing = c;
        for (c++; c < end && (*c == ' ' || *c == '\t'); c++)
            ;
        if (c == end || *c != '<')
            Py_RETURN_NONE;
        lt = c;
    } else {
        lt = memchr(p, '<', (size_t)n);
        if (lt == NULL) {
            /* an addr-spec: the URI up to the first ";", the header's parameters after it
             * (s20.10); no blank, no quote, no "*" alone (Python's wildcard) */
            if (n == 1 && p[0] == '*')
                Py_RETURN_NONE;
            for (const char *c = p; c < end; c++)
                if (*c <= ' ' || *c > '~' || *c == '"')
                    Py_RETURN_NONE;
            const char *semi = memchr(p, ';', (size_t)n);
            if (semi == p)
                Py_RETURN_NONE;
            PyObject *params = fast_params(semi, end);
            if (params == NULL || params == Py_None)
                return params;
            PyObject *uri = ascii(p, (semi == NULL ? end : semi) - p);
            PyObject *result = uri != NULL ? PyTuple_Pack(3, Py_None, uri, params) : NULL;
            Py_XDECREF(uri);
            Py_DECREF(params);
            return result;
        }
        for (const char *c = p; c < lt; c++)
            if (*c != ' ' && !is_token_char((unsigned char)*c))
                Py_RETURN_NONE;
    }
    const char *gt = memchr(lt, '>', (size_t)(end - lt));
    if (gt == NULL || gt == lt + 1)
        Py_RETURN_NONE;
    for (const char *c = lt + 1; c < gt; c++)
        if (*c <= ' ' || *c > '~')
            Py_RETURN_NONE;
    const char *rest = gt + 1;
    if (rest < end && *rest != ';')
        Py_RETURN_NONE;
    PyObject *params = fast_params(rest < end ? rest : NULL, end);
    if (params == NULL || params == Py_None)
        return params;
    PyObject *display;
    if (closing != NULL) {
        display = unquoted(p, closing, escapes);
    } else {
        const char *display_end = lt;
        while (display_end > p && display_end[-1] == ' ')
            display_end--;
        display = display_end == p ? Py_NewRef(Py_None) : ascii(p, display_end - p);
    }
    PyObject *uri = ascii(lt + 1, gt - lt - 1);
    PyObject *result = NULL;
    if (display != NULL && uri != NULL)
        result = PyTuple_Pack(3, display, uri, params);
    Py_XDECREF(display);
    Py_XDECREF(uri);
    Py_DECREF(params);
    return result;
}

/* sip/headers.py's `_parse_plain_via` of the Via nearly every peer sends, `SIP/2.0/UDP
 * host:port;params`: (transport in upper case, host, port or None, params, branch, rport) where
 * the Python function would return a Via of these fields, its parameters cut as `parse_params`
 * cuts them on its own fast path (no quoted value, no blank), and its `branch` and `rport` found
 * among them (so that `Via` does not look for them again, issue 18). None for anything else - a non-ASCII or
 * unprintable character, a blank or quote among the parameters, a transport other than the
 * plain ones, a host or port the plain form refuses, a port out of range, an empty parameter or
 * one whose name is not a token or whose value is empty after "=" - which the Python function
 * then parses, refuses with its error, or hands to the pattern. (tests/sip/test_message_c.py
 * compares both on every Via of the corpus and on mutations of them.) */
static PyObject *via_transports[6];
static PyObject *empty_str; /* "" */
static const char *const via_transport_names[6] = {"UDP", "TCP", "TLS", "SCTP", "WS", "WSS"};

static PyObject *plain_via(PyObject *self, PyObject *arg) {
    if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "plain_via takes str");
        return NULL;
    }
    if (!PyUnicode_IS_COMPACT_ASCII(arg))
        Py_RETURN_NONE;
    const char *p = (const char *)PyUnicode_DATA(arg);
    Py_ssize_t n = PyUnicode_GET_LENGTH(arg);
    if (n < 8 || memcmp(p, "SIP/2.0/", 8) != 0 || memchr(p, '\n', (size_t)n) != NULL)
        Py_RETURN_NONE;
    const char *end = p + n;
    const char *space = memchr(p + 8, ' ', (size_t)(n - 8));
    if (space == NULL)
        Py_RETURN_NONE;
    /* the transport: one of the plain ones, all in upper or all in lower case */
    Py_ssize_t tlen = space - (p + 8);
    PyObject *transport = NULL;
    for (int i = 0; i < 6 && transport == NULL; i++) {
        const char *name = via_transport_names[i];
        if ((Py_ssize_t)strlen(name) != tlen)
            continue;
        int upper = 1, lower = 1;
        for (Py_ssize_t j = 0; j < tlen; j++) {
            char c = p[8 + j];
            upper &= c == name[j];
            lower &= c == (char)(name[j] - 'A' + 'a');
        }
        if (upper || lower)
            transport = via_transports[i];
    }
    if (transport == NULL)
        Py_RETURN_NONE;
    const char *semi = memchr(space, ';', (size_t)(end - space));
    const char *sent_by = space + 1, *sent_end = semi == NULL ? end : semi;
    const char *colon = memchr(sent_by, ':', (size_t)(sent_end - sent_by));
    const char *host_end = colon == NULL ? sent_end : colon;
    if (host_end == sent_by)
        Py_RETURN_NONE;
    for (const char *c = sent_by; c < host_end; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '-' || *c == '.'))
            Py_RETURN_NONE;
    long port = -1;
    if (colon != NULL) {
        /* the rest of sent-by is the port: 1 to 5 digits, 1 to 65535 (out of range: the
         * Python function's error) */
        Py_ssize_t plen = sent_end - colon - 1;
        if (plen < 1 || plen > 5)
            Py_RETURN_NONE;
        port = 0;
        for (const char *c = colon + 1; c < sent_end; c++) {
            if (*c < '0' || *c > '9')
                Py_RETURN_NONE;
            port = port * 10 + (*c - '0');
        }
        if (port <= 0 || port >= 65536)
            Py_RETURN_NONE;
    }
    PyObject *params = fast_params(semi, end);
    if (params == NULL || params == Py_None)
        return params;
    /* `branch` and `rport`, as `Via` finds them: the first parameter of each name (in any
     * case), "" for one without a value, None for none (borrowed: params holds them) */
    PyObject *branch = Py_None, *rport = Py_None;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(params); i++) {
        PyObject *pair = PyTuple_GET_ITEM(params, i);
        PyObject *name = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        const char *c = (const char *)PyUnicode_DATA(name);
        Py_ssize_t len = PyUnicode_GET_LENGTH(name);
        if (value == Py_None)
            value = empty_str;
        if (len == 6 && strncasecmp(c, "branch", 6) == 0) {
            if (branch == Py_None)
                branch = value;
        } else if (len == 5 && rport == Py_None && strncasecmp(c, "rport", 5) == 0) {
            rport = value;
        }
    }
    PyObject *host = ascii(sent_by, host_end - sent_by);
    PyObject *port_obj = port < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(port);
    PyObject *result = NULL;
    if (host != NULL && port_obj != NULL)
        result = PyTuple_Pack(6, transport, host, port_obj, params, branch, rport);
    Py_XDECREF(host);
    Py_XDECREF(port_obj);
    Py_DECREF(params);
    return result;
}

/* The byte length of `items[0..count)` (pairs of ASCII str) written as "name: value\r\n"
 * lines, Content-Length's counted too (the callers write at most this much); -1 when one item is
 * not such a pair, which the Python functions then serialise. */
static Py_ssize_t item_lines_size(PyObject *const *items, Py_ssize_t count) {
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = items[i];
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2)
            return -1;
        PyObject *name = PyTuple_GET_ITEM(item, 0), *value = PyTuple_GET_ITEM(item, 1);
        if (!PyUnicode_Check(name) || !PyUnicode_Check(value) ||
            !PyUnicode_IS_COMPACT_ASCII(name) || !PyUnicode_IS_COMPACT_ASCII(value))
            return -1;
        total += PyUnicode_GET_LENGTH(name) + PyUnicode_GET_LENGTH(value) + 4;
    }
    return total;
}

/* Writes the items checked by `item_lines_size` at `out` as "name: value\r\n" lines but
 * Content-Length; returns the end of what it wrote. Each item, a tuple of two str, is also
 * `untracked` (those a response was made of in Python: the ones it keeps while its transaction
 * lingers are then none of the collector's work). */
static char *put_item_lines(char *out, PyObject *const *items, Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *name = PyTuple_GET_ITEM(items[i], 0), *value = PyTuple_GET_ITEM(items[i], 1);
        if (PyTuple_CheckExact(items[i]) && PyUnicode_CheckExact(name) &&
            PyUnicode_CheckExact(value))
            untracked(items[i]);
        Py_ssize_t name_len = PyUnicode_GET_LENGTH(name), value_len = PyUnicode_GET_LENGTH(value);
        if (name_len == 14 && memcmp(PyUnicode_DATA(name), "Content-Length", 14) == 0)
            continue;
        memcpy(out, PyUnicode_DATA(name), (size_t)name_len);
        out += name_len;
        memcpy(out, ": ", 2);
        out += 2;
        memcpy(out, PyUnicode_DATA(value), (size_t)value_len);
        out += value_len;
        memcpy(out, "\r\n", 2);
        out += 2;
    }
    return out;
}

/* sip/message.py's `serialize_headers_and_body` for a message of ASCII text: the start line,
 * `wire` (the first `first` items already serialised, `Headers.wire`, or ""), then every other
 * item as "name: value\r\n" but Content-Length, then "Content-Length: n\r\n\r\n" and the body,
 * written into one bytes object (the Python function's list of pieces, its join, its encoding
 * and the body's concatenation, issue 18). None for anything else - a non-ASCII str, an item
 * that is not a pair of str - which the Python function serialises (its encoding keeps
 * non-ASCII text as UTF-8, surrogate escapes as the bytes they stand for). */
static PyObject *serialize(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyUnicode_Check(args[0]) || !PyUnicode_Check(args[1]) ||
        !PyList_Check(args[2]) || !PyLong_Check(args[3]) || !PyBytes_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "serialize takes (start, wire, items, first, body)");
        return NULL;
    }
    PyObject *start = args[0], *wire = args[1], *items = args[2], *body = args[4];
    Py_ssize_t first = PyLong_AsSsize_t(args[3]);
    if (first == -1 && PyErr_Occurred())
        return NULL;
    if (!PyUnicode_IS_COMPACT_ASCII(start) || !PyUnicode_IS_COMPACT_ASCII(wire))
        Py_RETURN_NONE;
    Py_ssize_t count = PyList_GET_SIZE(items);
    if (first < 0 || first > count)
        Py_RETURN_NONE;
    Py_ssize_t body_len = PyBytes_GET_SIZE(body);
    char length_line[48];
    int length_len = snprintf(length_line, sizeof length_line, "Content-Length: %zd\r\n\r\n",
                              body_len);
    Py_ssize_t total = PyUnicode_GET_LENGTH(start) + PyUnicode_GET_LENGTH(wire) + length_len +
                       body_len;
    PyObject *const *lines = PySequence_Fast_ITEMS(items) + first; /* (no Python runs here) */
    Py_ssize_t lines_size = item_lines_size(lines, count - first);
    if (lines_size < 0)
        Py_RETURN_NONE;
    total += lines_size;
    PyObject *result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL)
        return NULL;
    char *out = PyBytes_AS_STRING(result);
#define PUT(p, n)                                                                                 \
    do {                                                                                          \
        memcpy(out, (p), (size_t)(n));                                                            \
        out += (n);                                                                               \
    } while (0)
    PUT(PyUnicode_DATA(start), PyUnicode_GET_LENGTH(start));
    PUT(PyUnicode_DATA(wire), PyUnicode_GET_LENGTH(wire));
    out = put_item_lines(out, lines, count - first);
    PUT(length_line, length_len);
    PUT(PyBytes_AS_STRING(body), body_len);
#undef PUT
    Py_ssize_t written = out - PyBytes_AS_STRING(result);
    if (written != total && _PyBytes_Resize(&result, written) < 0) /* Content-Length left out */
        return NULL;
    return result;
}

/* sip/message.py's `EchoedHeaders` text: every item of `items` (a tuple of (name, value) pairs
 * of str) as "name: value\r\n" but Content-Length, joined, as an ASCII str written at once (the
 * Python loop's f-string per item, its list and its join, issue 18). None for anything else - a
 * non-ASCII str, an item that is not a pair of str - which Python joins. */
static PyObject *header_block(PyObject *self, PyObject *items) {
    if (!PyTuple_Check(items)) {
        PyErr_SetString(PyExc_TypeError, "header_block takes a tuple of (name, value) pairs");
        return NULL;
    }
    PyObject *const *lines = PySequence_Fast_ITEMS(items);
    Py_ssize_t total = item_lines_size(lines, PyTuple_GET_SIZE(items));
    if (total < 0)
        Py_RETURN_NONE;
    PyObject *result = PyUnicode_New(total, 127);
    if (result == NULL)
        return NULL;
    char *out = put_item_lines((char *)PyUnicode_DATA(result), lines, PyTuple_GET_SIZE(items));
    Py_ssize_t written = out - (char *)PyUnicode_DATA(result);
    if (written != total) { /* Content-Length left out: the text that was written */
        PyObject *shorter = PyUnicode_Substring(result, 0, written);
        Py_DECREF(result);
        return shorter;
    }
    return result;
}

static PyObject *kept_lines(PyObject *self, PyObject *unused) {
    return PyLong_FromSsize_t(line_slots_used);
}

/* CPython's own test (_PyObject_GC_MAY_BE_TRACKED): whether `o` may ever be tracked by the
 * cyclic collector - a container, unless a tuple it already stopped tracking. */
static int may_be_tracked(PyObject *o) {
    if (!PyObject_IS_GC(o))
        return 0;
    if (PyTuple_CheckExact(o))
        return PyObject_GC_IsTracked(o);
    return 1;
}

/* A tuple of `args`, not tracked by the cyclic collector when none of them may be: what the
 * collector itself does to such a tuple the first time it walks it (_PyTuple_MaybeUntrack), done
 * when it is made, so that the collection after it has nothing to walk (issue 18: the SIP trace's
 * entries and the transactions' keys, ten a call, each kept seconds). */
static PyObject *atomic_tuple(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *tuple = PyTuple_New(nargs);
    if (tuple == NULL)
        return NULL;
    int atomic = 1;
    for (Py_ssize_t i = 0; i < nargs; i++) {
        Py_INCREF(args[i]);
        PyTuple_SET_ITEM(tuple, i, args[i]);
        if (atomic && may_be_tracked(args[i]))
            atomic = 0;
    }
    if (atomic && nargs > 0) /* (the empty tuple is a shared singleton) */
        PyObject_GC_UnTrack(tuple);
    return tuple;
}

static PyMethodDef methods[] = {
    {"atomic_tuple", (PyCFunction)(void (*)(void))atomic_tuple, METH_FASTCALL,
     "atomic_tuple(*items) -> the tuple of items, untracked by the cyclic collector when none of "
     "the items may be tracked (as the collector would untrack it at its first look)"},
    {"kept_lines", kept_lines, METH_NOARGS,
     "kept_lines() -> how many lines of the lines cache parse_head finds by their bytes"},
    {"call_id", call_id, METH_O,
     "call_id(data) -> the Call-ID's bytes when spelt canonically in the head, else None"},
    {"configure", configure, METH_VARARGS,
     "configure(names, lines, methods, varying, header_name, parse_uri, max_message, max_line, "
     "max_headers, max_lines_kept, line_kept, max_methods, max_body): the Python parser's caches, "
     "helpers and limits, shared"},
    {"serialize", (PyCFunction)(void (*)(void))serialize, METH_FASTCALL,
     "serialize(start, wire, items, first, body) -> the message's bytes, as sip/message.py's "
     "serialize_headers_and_body makes them, or None (not ASCII text: serialise it in Python)"},
    {"header_block", header_block, METH_O,
     "header_block(items) -> the (name, value) pairs but Content-Length as 'name: value\\r\\n' "
     "lines, joined, as sip/message.py's EchoedHeaders writes them, or None (not ASCII text)"},
    {"name_addr", name_addr, METH_O,
     "name_addr(value) -> (display name, URI text, params) of a plain name-addr, as sip/headers.py's "
     "_parse_address cuts it, or None (anything else: parse it in Python)"},
    {"plain_via", plain_via, METH_O,
     "plain_via(value) -> (transport, host, port, params, branch, rport) of a plain Via, as "
     "sip/headers.py's _parse_plain_via makes them, or None (anything else: parse it in Python)"},
    {"parse_head", (PyCFunction)(void (*)(void))parse_head, METH_FASTCALL,
     "parse_head(data, stream) -> (method, uri, items, index, body_start, body_end) | (status, "
     "reason, items, index, body_start, body_end) | None (not the common case: parse it in "
     "Python)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_csipmsg", "The common case of a SIP message's head, cut in C", -1,
    methods,  NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__csipmsg(void) {
    if (line_seed == 0) {
        /* per process, from the str hash's own secret (PYTHONHASHSEED): lines that collide
         * here in one process do not in the next */
        PyObject *name = PyUnicode_FromString("sipbridge._csipmsg line slots");
        if (name == NULL)
            return NULL;
        Py_hash_t seed = PyObject_Hash(name);
        Py_DECREF(name);
        if (seed == -1 && PyErr_Occurred())
            return NULL;
        line_seed = (uint64_t)seed | 1;
    }
    if (empty_str == NULL && (empty_str = PyUnicode_FromStringAndSize("", 0)) == NULL)
        return NULL;
    for (int i = 0; i < 6; i++)
        if (via_transports[i] == NULL &&
            (via_transports[i] = PyUnicode_InternFromString(via_transport_names[i])) == NULL)
            return NULL;
    return PyModule_Create(&module);
}
