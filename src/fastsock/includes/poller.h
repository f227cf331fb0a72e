/* Readiness polling and socket calls for fastsock's compiled engine.
 *
 * One small interface over the platform's best readiness API, chosen when
 * compiling: epoll on Linux, kqueue on macOS and the BSDs, poll() elsewhere
 * (or anywhere, with -DFASTSOCK_USE_POLL: the way to test it, and the
 * pipe it wakes with, on Linux).  A poller watches two
 * descriptors: the server's listening socket, which can be taken out of the
 * watch while accepting is paused, and a wake-up channel (an eventfd with
 * epoll, a pipe otherwise) that another thread writes to end a wait at once.
 *
 * A listener shared with sibling processes (prefork workers, each with a
 * poller of its own on the one inherited socket) is watched "exclusively"
 * where the platform can: epoll's EPOLLEXCLUSIVE (Linux >= 4.5; older
 * kernels ignore the flag) makes a new connection wake one of the pollers
 * in which a thread is waiting, not all of them.  A poller whose thread is
 * busy elsewhere does not count as woken (the kernel only notes the event
 * on its ready list) and the wake-up goes on to the next one, so a worker
 * stuck in a request does not hold connections back.  The kernel offers
 * each wake-up to the pollers in the order they added the listener: a
 * poller that the listener woke takes it out and adds it back before it
 * next sleeps, which puts it last, so that idle siblings take connections
 * in turn rather than the first one taking them all.  Until then, its
 * waits look without sleeping first: a busy loop that finds connections
 * waiting took no wake-up from its siblings (the kernel goes on to one
 * that sleeps) and needs no epoll_ctl() calls.  kqueue and poll()
 * have no such flag: every sibling wakes, and all but one find nothing to
 * accept (the listener is non-blocking for that).
 *
 * Every function here is safe to call without the GIL and reports failure
 * as a negative errno value, so that no caller depends on errno surviving
 * the GIL being taken back.
 */
#ifndef FASTSOCK_POLLER_H
#define FASTSOCK_POLLER_H

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/socket.h>

#if defined(FASTSOCK_USE_POLL)
    /* forced: the portable backend */
#elif defined(__linux__)
#  define FS_EPOLL 1    /* and an eventfd to wake it */
#  include <sys/epoll.h>
#  include <sys/eventfd.h>
#  ifndef EPOLLEXCLUSIVE  /* C library headers older than the kernel's */
#    define EPOLLEXCLUSIVE (1u << 28)
#  endif
#elif defined(__APPLE__) || defined(__FreeBSD__) || defined(__NetBSD__) \
    || defined(__OpenBSD__) || defined(__DragonFly__)
#  define FS_KQUEUE 1
#  include <sys/event.h>
#endif

#if defined(__linux__) || defined(__FreeBSD__) || defined(__NetBSD__) \
    || defined(__OpenBSD__) || defined(__DragonFly__)
#  define FS_HAVE_ACCEPT4 1
#endif

/* Whether accept() hands the listener's O_NONBLOCK on to the new socket.
   Linux never does; the BSDs do, and the caller must then mirror the
   standard library's fix-up. */
#if defined(__linux__)
#  define FS_ACCEPT_INHERITS_NONBLOCK 0
#else
#  define FS_ACCEPT_INHERITS_NONBLOCK 1
#endif

/* Whether a Unix socket address starting with NUL names Linux's abstract
   namespace (returned as bytes by the socket module). */
#if defined(__linux__)
#  define FS_ABSTRACT_UNIX_NAMES 1
#else
#  define FS_ABSTRACT_UNIX_NAMES 0
#endif

/* What fs_poller_wait() saw, as bits. */
#define FS_LISTENER_READY 1
#define FS_WOKEN 2

typedef struct {
    int poll_fd;    /* the epoll or kqueue descriptor; -1 with poll() */
    int wake_r;     /* read end of the wake-up channel */
    int wake_w;     /* write end: the same eventfd with epoll */
    int listen_fd;
    int listening;  /* whether listen_fd is watched */
    int shared;     /* listen_fd is shared with sibling processes' pollers */
    int exclusive;  /* and watched with EPOLLEXCLUSIVE */
    int rotate;     /* the listener woke it: put it last before waiting */
} fs_poller;

static inline int fs_set_cloexec_nonblock(int fd, int nonblock)
{
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
        return -errno;
    if (nonblock) {
        flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
            return -errno;
    }
    return 0;
}

static inline void fs_close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* Start or stop watching fd for input (EPOLL_CTL_ADD/DEL, EV_ADD/DELETE);
   a shared listener exclusively where the platform can.  EPOLLEXCLUSIVE
   is allowed with ADD only: pausing takes the listener out and puts it
   back, never modifies it. */
static inline int fs_poller_watch(fs_poller *p, int fd, int on)
{
#if defined(FS_EPOLL)
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (fd == p->listen_fd)
        p->exclusive = 0;
    if (on && p->shared && fd == p->listen_fd) {
        ev.events |= EPOLLEXCLUSIVE;
        if (epoll_ctl(p->poll_fd, EPOLL_CTL_ADD, fd, &ev) == 0) {
            p->exclusive = 1;
            return 0;
        }
        if (errno != EINVAL)
            return -errno;
        ev.events = EPOLLIN;  /* refused: watched as any other */
    }
    if (epoll_ctl(p->poll_fd, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, fd, &ev) < 0)
        return -errno;
#elif defined(FS_KQUEUE)
    struct kevent ev;
    EV_SET(&ev, fd, EVFILT_READ, on ? EV_ADD : EV_DELETE, 0, 0, NULL);
    if (kevent(p->poll_fd, &ev, 1, NULL, 0, NULL) < 0)
        return -errno;
#else
    (void)p; (void)fd; (void)on;
#endif
    return 0;
}

static inline void fs_poller_init(fs_poller *p)
{
    p->poll_fd = p->wake_r = p->wake_w = p->listen_fd = -1;
    p->listening = p->shared = p->exclusive = p->rotate = 0;
}

static inline void fs_poller_close(fs_poller *p)
{
    if (p->wake_w != p->wake_r)
        fs_close_fd(&p->wake_w);
    p->wake_w = -1;
    fs_close_fd(&p->wake_r);
    fs_close_fd(&p->poll_fd);
    p->listen_fd = -1;
    p->listening = p->shared = p->exclusive = p->rotate = 0;
}

static inline int fs_open_wake_channel(fs_poller *p)
{
#if defined(FS_EPOLL)
    p->wake_r = p->wake_w = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return p->wake_r < 0 ? -errno : 0;
#else
    int fds[2], err;
    if (pipe(fds) < 0)
        return -errno;
    p->wake_r = fds[0];
    p->wake_w = fds[1];
    if ((err = fs_set_cloexec_nonblock(p->wake_r, 1)) < 0)
        return err;
    return fs_set_cloexec_nonblock(p->wake_w, 1);
#endif
}

/* Open a poller watching listen_fd and its own wake-up channel; shared:
   whether sibling processes wait on listen_fd too (see above). */
static inline int fs_poller_open(fs_poller *p, int listen_fd, int shared)
{
    int err = 0;
    fs_poller_init(p);
    p->listen_fd = listen_fd;
    p->shared = shared;
#if defined(FS_EPOLL)
    p->poll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (p->poll_fd < 0)
        err = -errno;
#elif defined(FS_KQUEUE)
    p->poll_fd = kqueue();
    if (p->poll_fd < 0)
        err = -errno;
    else
        err = fs_set_cloexec_nonblock(p->poll_fd, 0);
#endif
    if (err == 0)
        err = fs_open_wake_channel(p);
    if (err == 0)
        err = fs_poller_watch(p, p->wake_r, 1);
    if (err == 0)
        err = fs_poller_watch(p, listen_fd, 1);
    if (err < 0) {
        fs_poller_close(p);
        return err;
    }
    p->listening = 1;
    return 0;
}

/* Watch the listening socket (on) or ignore it (off). */
static inline int fs_poller_set_listening(fs_poller *p, int on)
{
    int err;
    if (on == p->listening)
        return 0;
    err = fs_poller_watch(p, p->listen_fd, on);
    /* Stopping may fail if the socket was closed meanwhile, which already
       took it out of the poller: either way it is no longer watched. */
    if (err < 0 && on)
        return err;
    p->listening = on;
    return 0;
}

/* Whether fd has input waiting now (an invalid fd has none). */
static inline int fs_input_pending(int fd)
{
    struct pollfd pfd;
    pfd.fd = fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    return poll(&pfd, 1, 0) > 0 && (pfd.revents & POLLIN);
}

/* Wait up to timeout_ms (-1: forever) for the listener or a wake-up;
   return FS_LISTENER_READY | FS_WOKEN bits (0 on timeout).

   An exclusive wake-up taken by a sibling that then accepted nothing (it
   was stopping, or pausing, when it woke) reaches no other poller: a
   timed-out wait looks at a listener watched exclusively itself, so that
   such a connection waits one poll interval at most, not for the next
   one to arrive. */
static inline int fs_poller_wait(fs_poller *p, int timeout_ms)
{
    int n, i, seen = 0;
#if defined(FS_EPOLL)
    struct epoll_event ev[2];
    n = 0;
    if (p->rotate && timeout_ms != 0)
        n = epoll_wait(p->poll_fd, ev, 2, 0);  /* ready without sleeping? */
    if (n == 0) {
        if (p->rotate) {
            /* Last in the wake-up order (see above).  Should adding it
               back fail, it is not watched until
               fs_poller_set_listening() adds it before the next wait,
               which reports the error. */
            p->rotate = 0;
            if (p->exclusive && p->listening
                    && (fs_poller_watch(p, p->listen_fd, 0) < 0
                        || fs_poller_watch(p, p->listen_fd, 1) < 0))
                p->listening = 0;
        }
        n = epoll_wait(p->poll_fd, ev, 2, timeout_ms);
    }
    if (n < 0)
        return -errno;
    for (i = 0; i < n; i++)
        seen |= ev[i].data.fd == p->wake_r ? FS_WOKEN : FS_LISTENER_READY;
    if (n == 0 && p->exclusive && p->listening
            && fs_input_pending(p->listen_fd))
        seen = FS_LISTENER_READY;
    p->rotate |= p->exclusive && (seen & FS_LISTENER_READY);
#elif defined(FS_KQUEUE)
    struct kevent ev[2];
    struct timespec ts, *tsp = NULL;
    if (timeout_ms >= 0) {
        ts.tv_sec = timeout_ms / 1000;
        ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
        tsp = &ts;
    }
    n = kevent(p->poll_fd, NULL, 0, ev, 2, tsp);
    if (n < 0)
        return -errno;
    for (i = 0; i < n; i++)
        seen |= (int)ev[i].ident == p->wake_r ? FS_WOKEN : FS_LISTENER_READY;
#else
    struct pollfd fds[2];
    fds[0].fd = p->wake_r;
    fds[1].fd = p->listening ? p->listen_fd : -1;  /* poll skips fd -1 */
    fds[0].events = fds[1].events = POLLIN;
    fds[0].revents = fds[1].revents = 0;
    n = poll(fds, 2, timeout_ms);
    if (n < 0)
        return -errno;
    if (fds[0].revents)
        seen |= FS_WOKEN;
    if (fds[1].revents)
        seen |= FS_LISTENER_READY;
    (void)i;
#endif
    return seen;
}

/* End a wait in progress or the next one; callable from any thread. */
static inline void fs_poller_wake(fs_poller *p)
{
    ssize_t written;
    if (p->wake_w < 0)
        return;  /* closed */
#if defined(FS_EPOLL)
    uint64_t one = 1;
    written = write(p->wake_w, &one, sizeof(one));
#else
    char one = 1;
    written = write(p->wake_w, &one, 1);
#endif
    (void)written;  /* full, or closed by now: a wake-up is pending anyway */
}

static inline void fs_poller_drain(fs_poller *p)
{
    char buf[64];
    while (read(p->wake_r, buf, sizeof(buf)) > 0) {
    }
}

/* Wait up to timeout_ms (-1: forever) for input on fd: 1 ready, 0 not. */
static inline int fs_wait_readable(int fd, int timeout_ms)
{
    struct pollfd pfd;
    int n;
    pfd.fd = fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    n = poll(&pfd, 1, timeout_ms);
    return n < 0 ? -errno : n > 0;
}

/* Milliseconds of a monotonic clock, for deadlines across EINTR retries. */
static inline double fs_monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Accept one connection as a blocking, close-on-exec descriptor. */
static inline int fs_accept(int fd, struct sockaddr *addr, socklen_t *addrlen)
{
    int conn;
#ifdef FS_HAVE_ACCEPT4
    conn = accept4(fd, addr, addrlen, SOCK_CLOEXEC);
    if (conn >= 0 || errno != ENOSYS)
        return conn < 0 ? -errno : conn;
#endif
    conn = accept(fd, addr, addrlen);
    if (conn < 0)
        return -errno;
    if (fcntl(conn, F_SETFD, FD_CLOEXEC) < 0) {
        int err = -errno;
        close(conn);
        return err;
    }
    return conn;
}

/* Receive one datagram without blocking, truncated to bufsize as
   recvfrom() does; return its size, or -errno. */
static inline ssize_t fs_recvfrom(int fd, char *buf, size_t bufsize,
                                  struct sockaddr *addr, socklen_t *addrlen)
{
    ssize_t got = recvfrom(fd, buf, bufsize, MSG_DONTWAIT, addr, addrlen);
    return got < 0 ? -errno : got;
}

/* sendto() that never blocks (a full send buffer gives -EAGAIN); return
   the size sent, or -errno. */
static inline ssize_t fs_sendto(int fd, const char *buf, size_t size,
                                const struct sockaddr *addr, socklen_t addrlen)
{
    ssize_t sent = sendto(fd, buf, size, MSG_DONTWAIT, addr, addrlen);
    return sent < 0 ? -errno : sent;
}

#endif /* FASTSOCK_POLLER_H */
