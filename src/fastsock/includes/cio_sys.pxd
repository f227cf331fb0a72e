# C declarations of the calls fastsock._cio makes: recv() and send() on a
# socket descriptor, poll() to wait for it, and the monotonic clock that
# bounds the wait.

cdef extern from *:
    """
    #include <sys/types.h>
    #include <sys/socket.h>
    #include <poll.h>
    /* macOS has no MSG_NOSIGNAL; the interpreter ignores SIGPIPE there. */
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0
    #endif
    """


cdef extern from "<errno.h>":
    const int EWOULDBLOCK  # the same as EAGAIN on most systems


cdef extern from "<sys/socket.h>" nogil:
    const int MSG_NOSIGNAL

    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)


cdef extern from "<poll.h>" nogil:
    ctypedef unsigned long nfds_t

    struct pollfd:
        int fd
        short events
        short revents

    const short POLLIN
    const short POLLOUT

    int poll(pollfd *fds, nfds_t nfds, int timeout)
