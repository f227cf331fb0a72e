/*
 * loadgen: a closed-loop load generator for the fastsock benchmark.
 *
 * One thread drives many sockets with epoll.  Every connection (or, for
 * UDP, every socket) has at most one request in flight: it sends a request,
 * waits for the whole answer, checks it byte for byte and only then sends the
 * next one, so the request rate is what the server sustains at that
 * concurrency.  An answer that differs from the expected bytes in any way
 * (wrong byte, too long, cut short, wrong status) is an error, never
 * throughput; the connection is then dropped and a fresh one opened.
 *
 * Modes:
 *   echo      keep-alive line echo: SIZE-byte lines, each echoed back
 *   echo-cpr  connection per request: connect, one line, its echo, close
 *   udp       one SIZE-byte datagram, its echo
 *   http11    GET / over HTTP/1.1 keep-alive; the body must be SIZE bytes
 *   http10    GET / over HTTP/1.0, one connection per request
 *
 * The run ends after DURATION seconds, MAX requests or MAXERR errors,
 * whichever comes first; requests still in flight then are not counted.  The result is one
 * JSON object on stdout: counts, errors by kind, the first error's
 * description, and latency percentiles (request start to last byte checked;
 * for connection-per-request modes the start is before connect()).
 *
 * Keep-alive modes (echo, http11) time the server at CONNS connections: the
 * clock starts once every connection has had its first answer (or an error).
 * Until then the server is still accepting, and a server slow to accept would
 * be measured serving fewer connections than asked, which is cheaper per
 * request: a threaded Python server whose accepting thread waits seconds for
 * the GIL behind its busy workers would look faster for it.  A connection
 * answered in that phase sends nothing more until all are answered: its
 * next requests would keep the server from accepting the late ones, which
 * then time out.  Errors in that untimed phase still count; its requests
 * and latencies do not.  settle_ms
 * in the result is how long it took.  With -P PID, server_cpu_s is the CPU
 * time (user + system, with reaped children) of process PID when the clock
 * started, so that the caller can leave that phase out of CPU per request.
 *
 * With -W, several load generators (one per CPU given to load) start their
 * clocks together: once settled (at once for the other modes), loadgen
 * prints "SETTLED" on a line of its own and waits for a line on stdin
 * before it starts the clock; its result is then the next line.
 * loadgen_cpu_s in the result is its own CPU time (user + system) while
 * timed, so that the caller can tell that the load generator was not the
 * limit.
 *
 * Usage: loadgen MODE (--inet HOST:PORT | --unix PATH) [-c CONNS] [-s SIZE]
 *                [-d SECONDS] [-n MAX] [-e MAXERR] [-S SOURCES] [-t TIMEOUT]
 *                [-P PID] [-W 1]
 * SOURCES > 1 spreads connection-per-request clients over 127.0.0.1 ..
 * 127.0.0.SOURCES so that TIME_WAIT does not run out of ports.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum mode { ECHO, ECHO_CPR, UDP, HTTP11, HTTP10 };
enum state { IDLE, CONNECTING, BUSY };
enum error_kind { E_CONNECT, E_RESET, E_MISMATCH, E_EXTRA, E_SHORT, E_STATUS,
                  E_TIMEOUT, N_ERROR_KINDS };
static const char *error_names[N_ERROR_KINDS] = {
    "connect", "reset", "mismatch", "extra", "short", "status", "timeout"};

#define MAX_SIZE (1 << 20)
#define HTTP_HEAD_MAX 8192

struct conn {
    int id;
    int fd;
    enum state state;
    uint64_t seq;          /* number of this connection's current request */
    unsigned char *req;    /* the request being sent (echo modes: also the answer) */
    size_t req_len, sent;
    unsigned char *resp;   /* what has arrived (HTTP: head and body) */
    size_t got;
    size_t resp_len;       /* HTTP: full response length once the head is parsed */
    int keep_alive;        /* HTTP/1.1: server did not say Connection: close */
    int want_out;          /* EPOLLOUT armed: the socket buffer was full */
    int answered;          /* had an answer or an error since the run began */
    int parked;            /* answered while settling: waits for the others */
    uint64_t t0;
};

static enum mode mode;
static int use_unix;
static struct sockaddr_storage target;
static socklen_t target_len;
static int nconns = 1, nsources = 1;
static size_t size = 64;
static double duration = 1.0, timeout_s = 5.0;
static long server_pid;  /* -P: whose CPU time to report; 0: none */
static int wait_go;      /* -W: wait for a line on stdin before the clock */
static uint64_t max_requests = UINT64_MAX, max_errors = UINT64_MAX;

static int ep;
static struct conn *conns;
static uint64_t completed, late, errors[N_ERROR_KINDS], total_errors;
static int unanswered;  /* connections without an answer or error yet */
static int settling;    /* in the untimed phase before the clock starts */
static char first_error[256];
static uint32_t *latencies;  /* nanoseconds, clamped */
static size_t nlat, latcap;
static unsigned char *body;  /* the expected HTTP body */
static unsigned char *scratch;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory");
    return p;
}

static int is_cpr(void) { return mode == ECHO_CPR || mode == HTTP10; }
static int is_http(void) { return mode == HTTP11 || mode == HTTP10; }

/* The payload of request SEQ on connection ID: printable bytes that differ
 * from one request to the next, ending in a newline for the line modes. */
static void fill_payload(unsigned char *buf, int id, uint64_t seq) {
    for (size_t i = 0; i < size; i++)
        buf[i] = (unsigned char)(33 + (seq * 31 + (uint64_t)id * 7 + i * 13) % 94);
    if (mode != UDP) buf[size - 1] = '\n';
}

static void mark_answered(struct conn *c) {
    if (!c->answered) {
        c->answered = 1;
        unanswered--;
    }
}

static void record_error(struct conn *c, enum error_kind kind, const char *fmt, ...) {
    mark_answered(c);
    errors[kind]++;
    total_errors++;
    if (!first_error[0]) {
        va_list ap;
        int n = snprintf(first_error, sizeof first_error, "conn %d: %s: ",
                         c->id, error_names[kind]);
        va_start(ap, fmt);
        vsnprintf(first_error + n, sizeof first_error - n, fmt, ap);
        va_end(ap);
    }
}

static void record_latency(uint64_t ns) {
    if (nlat == latcap) {
        latcap = latcap ? latcap * 2 : 65536;
        latencies = realloc(latencies, latcap * sizeof *latencies);
        if (!latencies) die("out of memory");
    }
    latencies[nlat++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static void watch(struct conn *c, int op, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(ep, op, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
}

static void drop(struct conn *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->want_out = 0;
    c->state = IDLE;
}

static void parse_target(const char *spec) {
    memset(&target, 0, sizeof target);
    if (use_unix) {
        struct sockaddr_un *un = (struct sockaddr_un *)&target;
        if (strlen(spec) >= sizeof un->sun_path) die("unix path too long");
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, spec);
        target_len = sizeof *un;
        return;
    }
    char host[256];
    const char *colon = strrchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof host) die("bad target %s", spec);
    memcpy(host, spec, colon - spec);
    host[colon - spec] = 0;
    struct sockaddr_in *in = (struct sockaddr_in *)&target;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &in->sin_addr) != 1) die("bad IPv4 address %s", host);
    target_len = sizeof *in;
}

/* Bind to one of the 127.0.0.x source addresses, leaving the port to
 * connect() so that ports are shared across destinations. */
static void bind_source(int fd, uint64_t n) {
    struct sockaddr_in *dst = (struct sockaddr_in *)&target;
    if (use_unix || mode == UDP || nsources <= 1 ||
        (ntohl(dst->sin_addr.s_addr) >> 24) != 127)
        return;
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    struct sockaddr_in src = {.sin_family = AF_INET};
    src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(n % (uint64_t)nsources));
    bind(fd, (struct sockaddr *)&src, sizeof src);
}

static void start_request(struct conn *c);

/* Open the connection (or UDP socket); the request starts once connected. */
static void open_conn(struct conn *c) {
    static uint64_t opened;
    int type = (mode == UDP ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC;
    c->fd = socket(target.ss_family, type, 0);
    if (c->fd < 0) die("socket: %s", strerror(errno));
    if (!use_unix && mode != UDP) {
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    bind_source(c->fd, opened++);
    c->t0 = now_ns();
    if (connect(c->fd, (struct sockaddr *)&target, target_len) == 0) {
        watch(c, EPOLL_CTL_ADD, EPOLLIN);
        start_request(c);
    } else if (errno == EINPROGRESS || errno == EAGAIN) {
        c->state = CONNECTING;
        watch(c, EPOLL_CTL_ADD, EPOLLOUT);
    } else {
        record_error(c, E_CONNECT, "%s", strerror(errno));
        drop(c);
    }
}

static void send_pending(struct conn *c) {
    while (c->sent < c->req_len) {
        ssize_t n = send(c->fd, c->req + c->sent, c->req_len - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) {
                if (!c->want_out) watch(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
                c->want_out = 1;
                return;
            }
            record_error(c, E_RESET, "send: %s", strerror(errno));
            drop(c);
            return;
        }
        c->sent += (size_t)n;
    }
    if (c->want_out) watch(c, EPOLL_CTL_MOD, EPOLLIN);
    c->want_out = 0;
}

static void start_request(struct conn *c) {
    c->state = BUSY;
    c->seq++;
    c->sent = c->got = c->resp_len = 0;
    if (!is_cpr()) c->t0 = now_ns();
    if (!is_http()) fill_payload(c->req, c->id, c->seq);
    send_pending(c);
}

static void finish_request(struct conn *c) {
    mark_answered(c);
    completed++;
    record_latency(now_ns() - c->t0);
    if (is_cpr() || (mode == HTTP11 && !c->keep_alive))
        drop(c);  /* reopened by the main loop */
    else if (settling)
        c->parked = 1;  /* its next request would hold up the late ones */
    else
        start_request(c);
}

/* Echo modes: every byte read must be the next byte of the request. */
static void check_echo(struct conn *c, const unsigned char *data, size_t n) {
    size_t want = c->req_len - c->got;
    size_t cmp = n < want ? n : want;
    if (memcmp(data, c->req + c->got, cmp) != 0) {
        size_t i = 0;
        while (data[i] == c->req[c->got + i]) i++;
        record_error(c, E_MISMATCH, "byte %zu is 0x%02x, expected 0x%02x",
                     c->got + i, data[i], c->req[c->got + i]);
        drop(c);
        return;
    }
    c->got += cmp;
    if (n > want) {
        record_error(c, E_EXTRA, "%zu bytes after the echo", n - want);
        drop(c);
    } else if (c->got == c->req_len) {
        finish_request(c);
    }
}

/* HTTP: parse the head once it is complete, then wait for the whole body. */
static int parse_http_head(struct conn *c, size_t head_len) {
    const char *head = (const char *)c->resp;
    if (strncmp(head, "HTTP/1.", 7) != 0 || strncmp(head + 8, " 200", 4) != 0) {
        record_error(c, E_STATUS, "%.40s", head);
        return -1;
    }
    long length = -1;
    c->keep_alive = mode == HTTP11;
    for (const char *line = strstr(head, "\r\n") + 2; line < head + head_len;
         line = strstr(line, "\r\n") + 2) {
        if (strncasecmp(line, "Content-Length:", 15) == 0)
            length = strtol(line + 15, NULL, 10);
        else if (strncasecmp(line, "Connection:", 11) == 0 &&
                 strncasecmp(line + 11 + strspn(line + 11, " "), "close", 5) == 0)
            c->keep_alive = 0;
    }
    if (length != (long)size) {
        record_error(c, E_STATUS, "Content-Length %ld, expected %zu", length, size);
        return -1;
    }
    c->resp_len = head_len + size;
    return 0;
}

static void check_http(struct conn *c, const unsigned char *data, size_t n) {
    size_t cap = HTTP_HEAD_MAX + size;
    if (c->got + n > cap || (c->resp_len && c->got + n > c->resp_len)) {
        record_error(c, E_EXTRA, "%zu bytes beyond the response",
                     c->got + n - (c->resp_len ? c->resp_len : cap));
        drop(c);
        return;
    }
    memcpy(c->resp + c->got, data, n);
    c->got += n;
    if (!c->resp_len) {
        c->resp[c->got] = 0;
        char *end = strstr((char *)c->resp, "\r\n\r\n");
        if (!end) {
            if (c->got >= HTTP_HEAD_MAX) {
                record_error(c, E_STATUS, "head longer than %d bytes", HTTP_HEAD_MAX);
                drop(c);
            }
            return;
        }
        if (parse_http_head(c, (size_t)(end + 4 - (char *)c->resp)) < 0) {
            drop(c);
            return;
        }
        if (c->got > c->resp_len) {
            record_error(c, E_EXTRA, "%zu bytes beyond the response", c->got - c->resp_len);
            drop(c);
            return;
        }
    }
    if (c->got == c->resp_len) {
        if (memcmp(c->resp + c->resp_len - size, body, size) != 0) {
            record_error(c, E_MISMATCH, "body differs");
            drop(c);
            return;
        }
        finish_request(c);
    }
}

/* UDP: the answer must be this request's datagram; an answer to an earlier
 * request (one that timed out) is late, and neither error nor throughput. */
static void check_datagram(struct conn *c, const unsigned char *data, size_t n) {
    if (n == size && memcmp(data, c->req, size) == 0) {
        finish_request(c);
        return;
    }
    for (uint64_t back = 1; back <= 4 && back < c->seq; back++) {
        fill_payload(scratch + MAX_SIZE, c->id, c->seq - back);
        if (n == size && memcmp(data, scratch + MAX_SIZE, size) == 0) {
            late++;
            return;
        }
    }
    record_error(c, n == size ? E_MISMATCH : E_SHORT, "datagram of %zd bytes differs", n);
    /* The socket stays usable: resend under a new number. */
    start_request(c);
}

/* One recv per wake-up: epoll is level-triggered, so anything left over
 * wakes us again. */
static void on_readable(struct conn *c) {
    ssize_t n = recv(c->fd, scratch, MAX_SIZE, 0);
    if (n < 0) {
        if (errno == EAGAIN) return;
        record_error(c, E_RESET, "recv: %s", strerror(errno));
        drop(c);
        return;
    }
    if (n == 0 && mode != UDP) {
        /* A keep-alive connection the server closed between requests is
         * reopened; one closed mid-answer cut the answer short. */
        if (!(mode == HTTP11 && c->got == 0 && c->seq > 1))
            record_error(c, E_SHORT, "closed after %zu bytes", c->got);
        drop(c);
        return;
    }
    if (mode == UDP) check_datagram(c, scratch, (size_t)n);
    else if (is_http()) check_http(c, scratch, (size_t)n);
    else check_echo(c, scratch, (size_t)n);
}

static void on_event(struct conn *c, uint32_t events) {
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            record_error(c, E_CONNECT, "%s", strerror(err));
            drop(c);
            return;
        }
        watch(c, EPOLL_CTL_MOD, EPOLLIN);
        start_request(c);
        return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
    if (c->fd >= 0 && c->state == BUSY && (events & EPOLLOUT) && c->sent < c->req_len)
        send_pending(c);
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static double percentile_us(double p) {
    if (!nlat) return 0.0;
    size_t i = (size_t)(p * (double)(nlat - 1) + 0.5);
    return latencies[i] / 1000.0;
}

static void usage(void) {
    die("usage: loadgen echo|echo-cpr|udp|http11|http10 (--inet HOST:PORT | --unix PATH)"
        " [-c CONNS] [-s SIZE] [-d SECONDS] [-n MAX] [-e MAXERR] [-S SOURCES] [-t TIMEOUT]"
        " [-P PID] [-W 1]");
}

static void parse_args(int argc, char **argv) {
    if (argc < 2) usage();
    const char *names[] = {"echo", "echo-cpr", "udp", "http11", "http10"};
    int found = 0;
    for (int m = 0; m < 5; m++)
        if (strcmp(argv[1], names[m]) == 0) { mode = (enum mode)m; found = 1; }
    if (!found) usage();
    const char *spec = NULL;
    for (int i = 2; i < argc; i++) {
        const char *opt = argv[i];
        if (i + 1 >= argc) usage();
        const char *val = argv[++i];
        if (!strcmp(opt, "--inet")) spec = val;
        else if (!strcmp(opt, "--unix")) { spec = val; use_unix = 1; }
        else if (!strcmp(opt, "-c")) nconns = atoi(val);
        else if (!strcmp(opt, "-s")) size = (size_t)atol(val);
        else if (!strcmp(opt, "-d")) duration = atof(val);
        else if (!strcmp(opt, "-n")) max_requests = strtoull(val, NULL, 10);
        else if (!strcmp(opt, "-e")) max_errors = strtoull(val, NULL, 10);
        else if (!strcmp(opt, "-S")) nsources = atoi(val);
        else if (!strcmp(opt, "-t")) timeout_s = atof(val);
        else if (!strcmp(opt, "-P")) server_pid = atol(val);
        else if (!strcmp(opt, "-W")) wait_go = atoi(val);
        else usage();
    }
    if (!spec || nconns < 1 || size < 1 || size > MAX_SIZE - HTTP_HEAD_MAX ||
        nsources < 1 || nsources > 250)
        usage();
    if (use_unix && (mode == UDP || is_http())) die("--unix supports echo modes only");
    parse_target(spec);
}

/* CPU seconds of process PID and its reaped children; -1 if unknown. */
static double cpu_seconds(long pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');  /* the command name may hold anything */
    unsigned long long t[4];
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %llu %llu",
                     &t[0], &t[1], &t[2], &t[3]) != 4)
        return -1;
    return (double)(t[0] + t[1] + t[2] + t[3]) / (double)sysconf(_SC_CLK_TCK);
}

/* This process's CPU time (user + system), in seconds. */
static double own_cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* -W: say that this load generator is ready, and wait for the go. */
static void wait_for_go(void) {
    char line[16];
    printf("SETTLED\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) die("no go on stdin");
}

/* One turn of the event loop: (re)open connections, handle what is ready,
 * and time out requests left unanswered too long.  Returns the time. */
static uint64_t run_once(uint64_t timeout_ns) {
    static uint64_t last_sweep;
    static struct epoll_event events[256];
    for (int i = 0; i < nconns; i++)
        if (conns[i].fd < 0) open_conn(&conns[i]);
    int n = epoll_wait(ep, events, 256, 10);
    if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n && completed < max_requests; i++)
        on_event(events[i].data.ptr, events[i].events);
    uint64_t now = now_ns();
    if (!last_sweep) last_sweep = now;
    if (now - last_sweep > 10000000u) {
        last_sweep = now;
        for (int i = 0; i < nconns; i++) {
            struct conn *c = &conns[i];
            if (c->fd >= 0 && !c->parked && now - c->t0 > timeout_ns) {
                record_error(c, E_TIMEOUT, "no answer in %.1f s", timeout_s);
                if (mode == UDP) start_request(c);
                else drop(c);
            }
        }
    }
    return now;
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    ep = epoll_create1(EPOLL_CLOEXEC);
    scratch = xmalloc(2 * MAX_SIZE);
    body = xmalloc(size);
    for (size_t i = 0; i < size; i++) body[i] = (unsigned char)('a' + i % 26);

    static const char get11[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    static const char get10[] = "GET / HTTP/1.0\r\n\r\n";
    conns = xmalloc((size_t)nconns * sizeof *conns);
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        memset(c, 0, sizeof *c);
        c->id = i;
        c->fd = -1;
        if (is_http()) {
            c->req = (unsigned char *)(mode == HTTP11 ? get11 : get10);
            c->req_len = strlen((const char *)c->req);
            c->resp = xmalloc(HTTP_HEAD_MAX + size + 1);
        } else {
            c->req = xmalloc(size);
            c->req_len = size;
        }
    }

    unanswered = nconns;
    uint64_t timeout_ns = (uint64_t)(timeout_s * 1e9), settle_ns = 0;
    if (!is_cpr() && mode != UDP) {
        uint64_t t = now_ns(), limit = max_requests;
        max_requests = UINT64_MAX;  /* a limit for the timed requests only */
        settling = 1;
        while (unanswered > 0 && total_errors < max_errors) run_once(timeout_ns);
        settling = 0;
        settle_ns = now_ns() - t;
        for (int i = 0; i < nconns; i++)
            if (conns[i].parked) {
                conns[i].parked = 0;
                start_request(&conns[i]);
            }
        max_requests = limit;
        completed = late = 0;
        nlat = 0;
    }
    if (wait_go) wait_for_go();
    double server_cpu = server_pid ? cpu_seconds(server_pid) : -1;
    double own_cpu = own_cpu_seconds();
    uint64_t start = now_ns(), end = start + (uint64_t)(duration * 1e9), now = start;
    while (now < end && completed < max_requests && total_errors < max_errors)
        now = run_once(timeout_ns);
    double elapsed = (double)(now - start) / 1e9;
    own_cpu = own_cpu_seconds() - own_cpu;
    for (int i = 0; i < nconns; i++) drop(&conns[i]);

    qsort(latencies, nlat, sizeof *latencies, cmp_u32);
    printf("{\"requests\": %llu, \"errors\": %llu, \"late\": %llu, \"elapsed_s\": %.6f, "
           "\"rps\": %.1f, \"p50_us\": %.1f, \"p99_us\": %.1f, \"settle_ms\": %.1f, "
           "\"loadgen_cpu_s\": %.3f, \"errors_by_kind\": {",
           (unsigned long long)completed, (unsigned long long)total_errors,
           (unsigned long long)late, elapsed, elapsed > 0 ? completed / elapsed : 0.0,
           percentile_us(0.50), percentile_us(0.99), settle_ns / 1e6, own_cpu);
    for (int k = 0, sep = 0; k < N_ERROR_KINDS; k++)
        if (errors[k]) {
            printf("%s\"%s\": %llu", sep++ ? ", " : "", error_names[k],
                   (unsigned long long)errors[k]);
        }
    printf("}, ");
    if (server_cpu >= 0) printf("\"server_cpu_s\": %.3f, ", server_cpu);
    printf("\"first_error\": \"");
    for (const char *p = first_error; *p; p++)
        if (*p == '"' || *p == '\\') printf("\\%c", *p);
        else if ((unsigned char)*p >= 32) putchar(*p);
    printf("\"}\n");
    return 0;
}
