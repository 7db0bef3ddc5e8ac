/* What the SIP socket's C extensions (_csipudp.c, _csipthr.c) share about socket addresses and
 * their Python form, (host, port). Include after Python.h. */
#ifndef SIPBRIDGE_PYADDR_H
#define SIPBRIDGE_PYADDR_H

#include <arpa/inet.h>
#include <string.h>

#include "_sockaddr.h"

static inline socklen_t addr_len(const struct sockaddr_storage *a) {
    return a->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

/* A source address's host as text and its port: 0, or -1 when it is not an IP address. */
static int host_text(const struct sockaddr_storage *a, char *host, size_t size, int *port) {
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
        *port = ntohs(x->sin6_port);
        return inet_ntop(AF_INET6, &x->sin6_addr, host, (socklen_t)size) ? 0 : -1;
    }
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a;
        *port = ntohs(x->sin_port);
        return inet_ntop(AF_INET, &x->sin_addr, host, (socklen_t)size) ? 0 : -1;
    }
    return -1;
}

/* The (host, port) tuple last made, reused while datagrams keep coming from there. */
static struct sockaddr_storage last_addr;
static PyObject *last_tuple;

/* (host, port) of a source address, as the rest of the SIP stack keys peers; None when it is
 * not an IP address (not from a UDP socket of ours). */
static PyObject *addr_tuple(const struct sockaddr_storage *addr) {
    char host[INET6_ADDRSTRLEN];
    int port;
    if (last_tuple != NULL && addr_equal(addr, &last_addr)) {
        Py_INCREF(last_tuple);
        return last_tuple;
    }
    if (host_text(addr, host, sizeof(host), &port) < 0)
        Py_RETURN_NONE;
    PyObject *tuple = Py_BuildValue("(si)", host, port);
    if (tuple == NULL)
        return NULL;
    Py_XSETREF(last_tuple, tuple);
    Py_INCREF(tuple);
    last_addr = *addr;
    return tuple;
}

/* (host, port) into a socket address of `family`; an IPv4 host on an IPv6 socket is mapped.
 * 0 on success; -1 when it is no address (nothing raised: the caller counts it). */
static int to_sockaddr(PyObject *addr, int family, struct sockaddr_storage *out) {
    if (!PyTuple_Check(addr) || PyTuple_GET_SIZE(addr) < 2)
        return -1;
    PyObject *host_obj = PyTuple_GET_ITEM(addr, 0), *port_obj = PyTuple_GET_ITEM(addr, 1);
    if (!PyUnicode_Check(host_obj) || !PyLong_Check(port_obj))
        return -1;
    const char *host = PyUnicode_AsUTF8(host_obj);
    long port = PyLong_AsLong(port_obj);
    if (host == NULL || port < 0 || port > 65535) {
        PyErr_Clear();
        return -1;
    }
    memset(out, 0, sizeof(*out));
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)out;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) {
            struct in_addr v4;
            if (inet_pton(AF_INET, host, &v4) != 1)
                return -1;
            a->sin6_addr.s6_addr[10] = 0xff;
            a->sin6_addr.s6_addr[11] = 0xff;
            memcpy(&a->sin6_addr.s6_addr[12], &v4, 4);
        }
        return 0;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)out;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
}

#endif
