/*
 * echo_server: the smallest server the benchmark's workloads allow, in C
 * with epoll, to show the load generator's ceiling.  When a Python server
 * comes close to this one's rate, the client is the limit, not the server.
 *
 * Modes:
 *   stream   echo every byte back (keep-alive line echo)
 *   line     echo one line, then close (connection per request)
 *   udp      send every datagram back
 *   http     answer each GET with a SIZE-byte body; the connection is
 *            closed after an HTTP/1.0 request or "Connection: close"
 *
 * --corrupt flips one bit of every answer: the benchmark's own tests use it
 * to check that a wrong echo counts as an error.
 *
 * Usage: echo_server MODE (--inet HOST:PORT | --unix PATH) [-s SIZE] [--corrupt]
 * It binds (port 0 picks a free port), then prints "READY HOST:PORT" or
 * "READY PATH" on stdout and serves until killed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum mode { STREAM, LINE, UDP, HTTP };

struct conn {
    int fd;
    char *in;              /* HTTP: request bytes not yet answered */
    size_t in_len;
    char *out;             /* answer bytes the socket did not take yet */
    size_t out_len, out_cap;
    int close_after;       /* close once out is sent */
    int want_out;          /* waiting for EPOLLOUT instead of EPOLLIN */
};

static enum mode mode;
static int corrupt;
static size_t body_size = 64;
static int ep;
static char buf[1 << 16];

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void append(struct conn *c, const char *data, size_t n) {
    if (c->out_len + n > c->out_cap) {
        c->out_cap = (c->out_len + n) * 2;
        c->out = realloc(c->out, c->out_cap);
        if (!c->out) die("realloc");
    }
    memcpy(c->out + c->out_len, data, n);
    if (corrupt && n) c->out[c->out_len] ^= 1;
    c->out_len += n;
}

static void close_conn(struct conn *c) {
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
}

/* Send what is queued; returns 0 when the connection was closed. */
static int flush_out(struct conn *c) {
    size_t off = 0;
    while (off < c->out_len) {
        ssize_t n = send(c->fd, c->out + off, c->out_len - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) break;
            close_conn(c);
            return 0;
        }
        off += (size_t)n;
    }
    memmove(c->out, c->out + off, c->out_len - off);
    c->out_len -= off;
    if (c->want_out != (c->out_len > 0)) {
        /* Stop reading while the peer does not take our answers. */
        c->want_out = c->out_len > 0;
        struct epoll_event ev = {.events = c->want_out ? EPOLLOUT : EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    }
    if (!c->out_len && c->close_after) {
        shutdown(c->fd, SHUT_WR);
        close_conn(c);
        return 0;
    }
    return 1;
}

static void answer_http(struct conn *c, const char *data, size_t n) {
    c->in = realloc(c->in, c->in_len + n + 1);
    if (!c->in) die("realloc");
    memcpy(c->in + c->in_len, data, n);
    c->in_len += n;
    c->in[c->in_len] = 0;
    char *end;
    while (!c->close_after && (end = strstr(c->in, "\r\n\r\n"))) {
        char *eol = strstr(c->in, "\r\n");
        *end = 0;  /* search this request's head only */
        int v10 = eol - c->in >= 8 && memcmp(eol - 8, "HTTP/1.0", 8) == 0;
        int last = v10 || strcasestr(c->in, "\r\nConnection: close") != NULL;
        char head[160];
        int len = snprintf(head, sizeof head,
                           "HTTP/1.%d 200 OK\r\nContent-Type: text/plain\r\n"
                           "Content-Length: %zu\r\n\r\n", v10 ? 0 : 1, body_size);
        append(c, head, (size_t)len);
        for (size_t i = 0; i < body_size; i += sizeof buf) {
            size_t chunk = body_size - i < sizeof buf ? body_size - i : sizeof buf;
            for (size_t j = 0; j < chunk; j++) buf[j] = (char)('a' + (i + j) % 26);
            append(c, buf, chunk);
        }
        c->close_after = last;
        size_t used = (size_t)(end + 4 - c->in);
        memmove(c->in, c->in + used, c->in_len - used + 1);
        c->in_len -= used;
    }
}

static void on_readable(struct conn *c) {
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0) {
        close_conn(c);
        return;
    }
    if (mode == HTTP) {
        answer_http(c, buf, (size_t)n);
    } else if (mode == LINE) {
        char *nl = memchr(buf, '\n', (size_t)n);
        append(c, buf, nl ? (size_t)(nl + 1 - buf) : (size_t)n);
        c->close_after = nl != NULL;
    } else {
        append(c, buf, (size_t)n);
    }
    flush_out(c);
}

static void serve_udp(int fd) {
    struct sockaddr_storage peer;
    for (;;) {
        socklen_t len = sizeof peer;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("recvfrom");
        }
        if (corrupt && n) buf[0] ^= 1;
        sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, len);
    }
}

int main(int argc, char **argv) {
    const char *names[] = {"stream", "line", "udp", "http"};
    const char *spec = NULL;
    int use_unix = 0, found = 0;
    if (argc < 2) goto usage;
    for (int m = 0; m < 4; m++)
        if (strcmp(argv[1], names[m]) == 0) { mode = (enum mode)m; found = 1; }
    if (!found) goto usage;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--corrupt")) corrupt = 1;
        else if (i + 1 >= argc) goto usage;
        else if (!strcmp(argv[i], "--inet")) spec = argv[++i];
        else if (!strcmp(argv[i], "--unix")) { spec = argv[++i]; use_unix = 1; }
        else if (!strcmp(argv[i], "-s")) body_size = (size_t)atol(argv[++i]);
        else goto usage;
    }
    if (!spec) goto usage;

    int type = mode == UDP ? SOCK_DGRAM : SOCK_STREAM;
    int lfd;
    if (use_unix) {
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        if (strlen(spec) >= sizeof un.sun_path) goto usage;
        strcpy(un.sun_path, spec);
        lfd = socket(AF_UNIX, type, 0);
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&un, sizeof un) < 0) die("bind");
        printf("READY %s\n", spec);
    } else {
        char host[64];
        const char *colon = strrchr(spec, ':');
        if (!colon || (size_t)(colon - spec) >= sizeof host) goto usage;
        memcpy(host, spec, colon - spec);
        host[colon - spec] = 0;
        struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};
        if (inet_pton(AF_INET, host, &in.sin_addr) != 1) goto usage;
        lfd = socket(AF_INET, type, 0);
        int one = 1;
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        socklen_t len = sizeof in;
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&in, sizeof in) < 0 ||
            getsockname(lfd, (struct sockaddr *)&in, &len) < 0)
            die("bind");
        printf("READY %s:%d\n", host, ntohs(in.sin_port));
    }
    if (mode != UDP && listen(lfd, 4096) < 0) die("listen");
    fflush(stdout);  /* READY only once clients can connect */
    if (mode == UDP) serve_udp(lfd);

    ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                if (fd < 0) continue;
                if (!use_unix) {
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                }
                c = calloc(1, sizeof *c);
                if (!c) die("calloc");
                c->fd = fd;
                struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
            } else if (events[i].events & EPOLLOUT) {
                flush_out(c);
            } else {
                on_readable(c);
            }
        }
    }
usage:
    fprintf(stderr, "usage: echo_server stream|line|udp|http (--inet HOST:PORT | --unix PATH)"
                    " [-s SIZE] [--corrupt]\n");
    return 2;
}
