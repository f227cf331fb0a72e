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

    /* The descriptor of a socket module socket, read from its C object:
       the socket module keeps it first after the object header.
       fastsock._cio checks that on real sockets before relying on it. */
    #include <Python.h>
    typedef struct {
        PyObject_HEAD
        int sock_fd;
    } fs_socket_head;

    static inline int fs_socket_fd(PyObject *sock)
    {
        return ((fs_socket_head *)sock)->sock_fd;
    }
    """
    int fs_socket_fd(object sock)


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
