# C declarations of includes/poller.h: readiness polling (epoll, kqueue or
# poll), the wake-up channel and the socket calls of the compiled engine.
# Functions return a negative errno value on failure.

from includes.posix_net cimport sockaddr, socklen_t


cdef extern from "poller.h" nogil:
    const int FS_LISTENER_READY
    const int FS_WOKEN
    const int FS_ACCEPT_INHERITS_NONBLOCK
    const int FS_ABSTRACT_UNIX_NAMES

    ctypedef struct fs_poller:
        int listen_fd
        int listening

    void fs_poller_init(fs_poller *p)
    int fs_poller_open(fs_poller *p, int listen_fd, int shared)
    int fs_poller_set_listening(fs_poller *p, int on)
    int fs_poller_wait(fs_poller *p, int timeout_ms)
    void fs_poller_wake(fs_poller *p)
    void fs_poller_drain(fs_poller *p)
    void fs_poller_close(fs_poller *p)

    int fs_wait_readable(int fd, int timeout_ms)
    bint fs_input_pending(int fd)
    double fs_monotonic_ms()
    int fs_accept(int fd, sockaddr *addr, socklen_t *addrlen)
    ssize_t fs_recvfrom(int fd, char *buf, size_t bufsize, sockaddr *addr,
                        socklen_t *addrlen)
    ssize_t fs_sendto(int fd, const char *buf, size_t size,
                      const sockaddr *addr, socklen_t addrlen)
