/* Batched UDP I/O for the SIP socket (driven by server/sip/udp.py).
 *
 * recv_batch reads what a readiness of the socket holds with one recvmmsg (up to BATCH
 * datagrams); send_batch sends what one flush of the SIP stack produced with sendmmsg (as few
 * calls as the kernel takes). Both run on the event loop's thread with the GIL held: the socket
 * is non-blocking and both return as soon as the kernel has nothing more to give or take.
 *
 * Hostile input: a datagram longer than the buffer (MSG_TRUNC) is dropped and counted, never
 * handed on cut short; an error is returned as its errno, for the caller to count. Nothing here
 * parses SIP.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "_pyaddr.h"

#define BATCH 32           /* datagrams per recvmmsg, and per sendmmsg */
#define READ_SIZE 65535    /* a UDP datagram's largest payload (server/sip/transport.py) */

static unsigned char (*bufs)[READ_SIZE]; /* BATCH buffers, allocated at the first read */
static struct mmsghdr rmsgs[BATCH], smsgs[BATCH];
static struct iovec riov[BATCH], siov[BATCH];
static struct sockaddr_storage raddr[BATCH], saddr[BATCH];

static PyObject *recv_batch(PyObject *self, PyObject *args) {
    int fd, size = READ_SIZE;
    if (!PyArg_ParseTuple(args, "i|i", &fd, &size))
        return NULL;
    if (size < 1 || size > READ_SIZE) {
        PyErr_Format(PyExc_ValueError, "a read size is 1 to %d bytes", READ_SIZE);
        return NULL;
    }
    if (bufs == NULL) {
        bufs = PyMem_RawMalloc((size_t)BATCH * READ_SIZE);
        if (bufs == NULL)
            return PyErr_NoMemory();
    }
    for (int i = 0; i < BATCH; i++) {
        riov[i].iov_base = bufs[i];
        riov[i].iov_len = (size_t)size;
        memset(&rmsgs[i].msg_hdr, 0, sizeof(rmsgs[i].msg_hdr));
        rmsgs[i].msg_hdr.msg_iov = &riov[i];
        rmsgs[i].msg_hdr.msg_iovlen = 1;
        rmsgs[i].msg_hdr.msg_name = &raddr[i];
        rmsgs[i].msg_hdr.msg_namelen = sizeof(raddr[i]);
    }
    int n = recvmmsg(fd, rmsgs, BATCH, MSG_DONTWAIT, NULL);
    int error = 0;
    if (n < 0) {
        error = (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : errno;
        n = 0;
    }
    int truncated = 0;
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    for (int i = 0; i < n; i++) {
        if (rmsgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
            truncated++;
            continue;
        }
        PyObject *addr = addr_tuple(&raddr[i]);
        if (addr == NULL)
            goto fail;
        PyObject *data = PyBytes_FromStringAndSize((const char *)bufs[i], rmsgs[i].msg_len);
        if (data == NULL) {
            Py_DECREF(addr);
            goto fail;
        }
        PyObject *pair = PyTuple_Pack(2, data, addr);
        Py_DECREF(data);
        Py_DECREF(addr);
        if (pair == NULL || PyList_Append(list, pair) < 0) {
            Py_XDECREF(pair);
            goto fail;
        }
        Py_DECREF(pair);
    }
    return Py_BuildValue("(Niii)", list, n, truncated, error);
fail:
    Py_DECREF(list);
    return NULL;
}

static PyObject *send_batch(PyObject *self, PyObject *args) {
    int fd, family;
    PyObject *items;
    if (!PyArg_ParseTuple(args, "iiO!", &fd, &family, &PyList_Type, &items))
        return NULL;
    Py_ssize_t total = PyList_GET_SIZE(items);
    Py_ssize_t at = 0;
    int sent = 0, failed = 0, last_error = 0;
    /* the (host, port) object of the previous datagram: a peer's responses share one */
    PyObject *previous = NULL;
    while (at < total) {
        int count = 0;
        for (; at < total && count < BATCH; at++) {
            PyObject *item = PyList_GET_ITEM(items, at);
            char *data;
            Py_ssize_t size;
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
                PyBytes_AsStringAndSize(PyTuple_GET_ITEM(item, 0), &data, &size) < 0) {
                PyErr_Clear();
                failed++;
                last_error = EINVAL;
                continue;
            }
            PyObject *addr = PyTuple_GET_ITEM(item, 1);
            socklen_t len;
            if (addr == previous && count > 0) {
                saddr[count] = saddr[count - 1];
                len = smsgs[count - 1].msg_hdr.msg_namelen;
            } else if (to_sockaddr(addr, family, &saddr[count]) < 0) {
                failed++;
                last_error = EAFNOSUPPORT;
                continue;
            } else {
                len = addr_len(&saddr[count]);
            }
            previous = addr;
            siov[count].iov_base = data;
            siov[count].iov_len = (size_t)size;
            memset(&smsgs[count].msg_hdr, 0, sizeof(smsgs[count].msg_hdr));
            smsgs[count].msg_hdr.msg_iov = &siov[count];
            smsgs[count].msg_hdr.msg_iovlen = 1;
            smsgs[count].msg_hdr.msg_name = &saddr[count];
            smsgs[count].msg_hdr.msg_namelen = len;
            count++;
        }
        int done = 0;
        while (done < count) {
            int n = sendmmsg(fd, &smsgs[done], (unsigned int)(count - done), MSG_DONTWAIT);
            if (n > 0) {
                done += n;
                sent += n;
                continue;
            }
            if (n < 0 && errno == EINTR)
                continue;
            /* the datagram at `done` failed (an unreachable address, a full buffer): count it
             * and go on with the next, as a lost datagram that SIP retransmission covers */
            last_error = n < 0 ? errno : EIO;
            failed++;
            done++;
        }
        previous = NULL;
    }
    return Py_BuildValue("(iii)", sent, failed, last_error);
}

static PyMethodDef methods[] = {
    {"recv_batch", recv_batch, METH_VARARGS,
     "recv_batch(fd, size=READ_SIZE) -> ([(data, (host, port))...], read, truncated, errno):\n"
     "one recvmmsg; a datagram longer than `size` is dropped (counted in truncated)"},
    {"send_batch", send_batch, METH_VARARGS,
     "send_batch(fd, family, [(data, (host, port))...]) -> (sent, failed, last errno)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_csipudp", "Batched UDP I/O for the SIP socket", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__csipudp(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "BATCH", BATCH) < 0 ||
        PyModule_AddIntConstant(m, "READ_SIZE", READ_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
