/* What the C extensions (_crelay.c, _csipudp.c, _csipthr.c) share about socket addresses. */
#ifndef SIPBRIDGE_SOCKADDR_H
#define SIPBRIDGE_SOCKADDR_H

#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

/* Whether two source addresses are the same peer (family, address, port; for IPv6 also the
 * scope and flow label, as a latched RTP source is kept). */
static inline int addr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a, *y = (const struct sockaddr_in *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a,
                                  *y = (const struct sockaddr_in6 *)b;
        return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
               x->sin6_flowinfo == y->sin6_flowinfo &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    return 0;
}

#endif
