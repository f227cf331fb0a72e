# C declarations of the POSIX socket structures and calls that the compiled
# engine uses to turn a peer's address into what socket.accept() returns.

from libc.stdint cimport uint16_t, uint32_t


cdef extern from "<errno.h>":
    const int EWOULDBLOCK  # the same as EAGAIN on most systems


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t

    struct sockaddr:
        sa_family_t sa_family

    struct sockaddr_storage:
        sa_family_t ss_family

    const int AF_INET
    const int AF_INET6
    const int AF_UNIX
    const int SHUT_WR

    int shutdown(int fd, int how)


cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        pass

    struct in6_addr:
        pass

    struct sockaddr_in:
        uint16_t sin_port
        in_addr sin_addr

    struct sockaddr_in6:
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id

    const int INET6_ADDRSTRLEN


cdef extern from "<arpa/inet.h>" nogil:
    uint16_t ntohs(uint16_t)
    uint32_t ntohl(uint32_t)
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)


cdef extern from "<sys/un.h>" nogil:
    struct sockaddr_un:
        char sun_path[1]
