/*
 * trio_echo bench load generator: one process, one event loop, non-blocking sockets.
 *
 * Why C: the benchmark compares servers, so the client must never be the bottleneck.  A
 * single-threaded event loop in C drives thousands of loopback connections with a small
 * fraction of one core; it reports its own CPU use so the report can show the headroom.
 *
 *   loadgen echo   -p PORT -c CONNS -s SIZE (-d SECONDS | -n REQUESTS) [-t TIMEOUT] [-i]
 *       Connect CONNS clients (all at once), then each one in a closed loop: send SIZE bytes
 *       (a line), wait until all SIZE bytes came back, record the latency (CLOCK_MONOTONIC),
 *       repeat until -d SECONDS passed or it did -n REQUESTS.  Prints {"event":"start"} when
 *       the measurement begins (after every connect finished, unless -n: then the clock
 *       includes the connects, which is what the connection storm measures) and the result.
 *       -i: also stop when stdin reaches EOF (background load that another measurement ends);
 *       the result's elapsed is then the time measured until then.
 *   loadgen open   -p PORT -c CONNS -s SIZE -r RATE -d SECONDS [-g GRACE] [-w S] [-t TIMEOUT]
 *       The open loop (wrk2's method, without coordinated omission): after the same warm-up
 *       as echo, request j of the run is due at start + j/RATE, on connection j mod CONNS,
 *       for every j/RATE < SECONDS, whatever the server does.  Its latency runs from when it
 *       was DUE, not from when it was sent.  Each connection keeps one request in flight, as
 *       wrk2 does: a request that falls due while its connection still waits for the previous
 *       answer is sent the moment that answer arrives, and its clock has been running since it
 *       fell due (the backlog is counted: "backlogged").  Pipelining instead would measure the
 *       server's batching of a queue that a real client never builds, and would make the
 *       closed and open figures of one connection incomparable.  After the schedule ends the
 *       answers still due get GRACE seconds (default 2); those never answered are reported as
 *       "unfinished" (a stalled server is not let off by the end of the run).
 *   loadgen stream -p PORT -c CONNS -s LINE -d SECONDS [-t TIMEOUT]
 *       Each client writes lines of LINE bytes as fast as the server takes them for SECONDS,
 *       then half-closes and waits for the server to close: so every byte counted was read by
 *       the server, not merely buffered by the kernel.
 *   loadgen hold   -p PORT -c CONNS [-t TIMEOUT]
 *       Connect CONNS clients, each sends one line and waits for its echo (proof the server
 *       accepted it and runs a handler for it), prints {"event":"ready",...}, then waits for
 *       the server to close the connections or for stdin to reach EOF, and prints the counts
 *       of EOFs and resets.
 *
 * Output: JSON objects, one per line, on stdout.  Latencies are a sparse log-linear histogram
 * of microseconds ([[value_us, count], ...], at most 0.2% error) so that percentiles are
 * computed (and unit-tested) in Python; the result also gives p50/p90/p99/p99.9 for a reader of
 * the raw line.  Exit status 0, or 2 on a usage error.
 *
 * Event backends: epoll on Linux; poll() elsewhere (macOS, the BSDs), or on Linux when built
 * with -DLOADGEN_POLL, so that the test suite runs the poll backend too.  The open loop wakes
 * at each due time with sub-millisecond precision: a timerfd beside epoll, ppoll's timespec
 * (poll's milliseconds, rounded up, on macOS, which lacks ppoll).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__linux__) && !defined(LOADGEN_POLL)
#define USE_EPOLL 1
#include <sys/epoll.h>
#include <sys/timerfd.h>
#else
#include <poll.h>
#endif
#ifdef __linux__
#include <sys/prctl.h>
#endif

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* macOS: SIGPIPE is ignored instead (see main) */
#endif

enum { CONNECTING, SENDING, RECEIVING, DRAINING, IDLE, CLOSED };
enum { MODE_ECHO, MODE_STREAM, MODE_HOLD, MODE_OPEN };
enum { EV_IN = 1, EV_OUT = 2 };

struct conn {
    int fd;
    int state;
    int index;        /* its place in conns[]: open loop, which requests of the schedule */
    size_t sent;      /* bytes of the current message sent (echo/hold/open) */
    size_t received;  /* bytes of the current echo received */
    uint64_t t0;      /* when the current request started (open loop: when it was due), ns */
    uint64_t requests;
    uint64_t issued;  /* open loop: requests sent (the next one is issued*CONNS+index) */
    int warm;         /* echo/open: its unmeasured warm-up request came back */
    int replied;      /* echo/open: the server answered it at least once */
    unsigned events;  /* what the backend watches now: skip the call when it would not change */
    uint64_t bytes;   /* stream: bytes written */
};

/* ---- latency histogram ------------------------------------------------------------------- */

/* Log-linear histogram: values < 1024 exact, above that 9 significant bits (<= 0.2% error). */
#define SUB 1024
#define HALF 512
#define MAXEXP 40
static uint64_t hist[SUB + MAXEXP * HALF];
static uint64_t lat_max, lat_sum, lat_count;

static int hist_index(uint64_t v) {
    if (v < SUB) return (int)v;
    int e = 63 - __builtin_clzll(v) - 9; /* v >> e in [512, 1023] */
    if (e > MAXEXP) e = MAXEXP;
    uint64_t m = v >> e;
    if (m > 1023) m = 1023;
    return SUB + (e - 1) * HALF + (int)(m - HALF);
}

static uint64_t hist_value(int i) {
    if (i < SUB) return (uint64_t)i;
    int e = (i - SUB) / HALF + 1;
    uint64_t m = (uint64_t)((i - SUB) % HALF + HALF);
    return m << e;
}

static void record(uint64_t ns) {
    uint64_t us = ns / 1000;
    hist[hist_index(us)]++;
    if (us > lat_max) lat_max = us;
    lat_sum += us;
    lat_count++;
}

/* Nearest rank, as stats.py: the smallest value with at least num/den of the samples at or
   below it (integer arithmetic, so p99.9 of 1000 samples is the 999th exactly). */
static uint64_t hist_percentile(uint64_t num, uint64_t den) {
    uint64_t rank = (lat_count * num + den - 1) / den, seen = 0;
    if (rank == 0) rank = 1;
    for (int i = 0; i < (int)(sizeof hist / sizeof hist[0]); i++) {
        seen += hist[i];
        if (hist[i] && seen >= rank) return hist_value(i);
    }
    return 0;
}

static void print_hist(void) {
    printf("\"latency_us\":[");
    int first = 1;
    for (int i = 0; i < (int)(sizeof hist / sizeof hist[0]); i++) {
        if (!hist[i]) continue;
        printf("%s[%llu,%llu]", first ? "" : ",", (unsigned long long)hist_value(i),
               (unsigned long long)hist[i]);
        first = 0;
    }
    printf("],\"latency_max_us\":%llu,\"latency_mean_us\":%.1f", (unsigned long long)lat_max,
           lat_count ? (double)lat_sum / (double)lat_count : 0.0);
    if (lat_count)
        printf(",\"p50_us\":%llu,\"p90_us\":%llu,\"p99_us\":%llu,\"p99_9_us\":%llu",
               (unsigned long long)hist_percentile(50, 100),
               (unsigned long long)hist_percentile(90, 100),
               (unsigned long long)hist_percentile(99, 100),
               (unsigned long long)hist_percentile(999, 1000));
}

/* ---- clocks -------------------------------------------------------------------------------- */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* ---- event backends: the same five calls over epoll or poll ------------------------------- */

/* A wait returns the data pointers of the ready descriptors (NULL: stdin); which events does
   not matter, because every handler tries its operation and takes EAGAIN for "not yet". */
#ifdef USE_EPOLL
static const char backend_name[] = "epoll";
static int epfd, timer_fd = -1;
static uint64_t timer_armed;   /* absolute ns the timerfd is set to, 0: disarmed */
static char timer_marker;      /* the timerfd's data pointer */
static struct epoll_event *ready_events;

static uint32_t to_epoll(unsigned events) {
    return (events & EV_IN ? EPOLLIN : 0) | (events & EV_OUT ? EPOLLOUT : 0);
}

static int ev_init(int max) {
    epfd = epoll_create1(EPOLL_CLOEXEC);
    ready_events = malloc(sizeof *ready_events * (size_t)max);
    return epfd < 0 ? -1 : 0;
}

static int ev_add(int fd, void *ptr, unsigned events) {
    struct epoll_event ev = {.events = to_epoll(events), .data.ptr = ptr};
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

static void ev_mod(int fd, void *ptr, unsigned events) {
    struct epoll_event ev = {.events = to_epoll(events), .data.ptr = ptr};
    epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
}

static void ev_del(int fd) { epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL); }

/* Wait for readiness, at most max_ms, and (wake_at != 0) not past wake_at (absolute ns): a
   timerfd, so the open loop is not bound to epoll_wait's milliseconds. */
static int ev_wait(void **out, int max, uint64_t wake_at, int max_ms) {
    int timeout = max_ms;
    if (wake_at) {
        if (wake_at <= now_ns() + 2000) {
            timeout = 0;
        } else if (wake_at != timer_armed) {
            if (timer_fd < 0) {
                timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &timer_marker};
                epoll_ctl(epfd, EPOLL_CTL_ADD, timer_fd, &ev);
            }
            struct itimerspec its = {.it_value = {.tv_sec = (time_t)(wake_at / 1000000000ull),
                                                  .tv_nsec = (long)(wake_at % 1000000000ull)}};
            timerfd_settime(timer_fd, TFD_TIMER_ABSTIME, &its, NULL);
            timer_armed = wake_at;
        }
    }
    int n = epoll_wait(epfd, ready_events, max, timeout);
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (ready_events[i].data.ptr == &timer_marker) {
            uint64_t ticks;
            if (read(timer_fd, &ticks, sizeof ticks) < 0) { /* already read: nothing to do */ }
            timer_armed = 0;
            continue;
        }
        out[k++] = ready_events[i].data.ptr;
    }
    return n < 0 ? -1 : k;
}
#else
static const char backend_name[] = "poll";
static struct pollfd *pfds;  /* what poll() watches, packed */
static void **pptrs;         /* the data pointer of each pfds[i] */
static int npfds, pfds_cap;
static int *slot_of_fd;      /* fd -> its index in pfds, so mod/del are O(1) */
static int slots_cap;

static short to_poll(unsigned events) {
    return (short)((events & EV_IN ? POLLIN : 0) | (events & EV_OUT ? POLLOUT : 0));
}

static int ev_init(int max) {
    (void)max;
    return 0;
}

static int ev_add(int fd, void *ptr, unsigned events) {
    if (npfds == pfds_cap) {
        pfds_cap = pfds_cap ? 2 * pfds_cap : 256;
        pfds = realloc(pfds, sizeof *pfds * (size_t)pfds_cap);
        pptrs = realloc(pptrs, sizeof *pptrs * (size_t)pfds_cap);
    }
    if (fd >= slots_cap) {
        int cap = slots_cap ? slots_cap : 256;
        while (cap <= fd) cap *= 2;
        slot_of_fd = realloc(slot_of_fd, sizeof *slot_of_fd * (size_t)cap);
        slots_cap = cap;
    }
    pfds[npfds] = (struct pollfd){.fd = fd, .events = to_poll(events)};
    pptrs[npfds] = ptr;
    slot_of_fd[fd] = npfds++;
    return 0;
}

static void ev_mod(int fd, void *ptr, unsigned events) {
    (void)ptr;
    pfds[slot_of_fd[fd]].events = to_poll(events);
}

static void ev_del(int fd) {
    int i = slot_of_fd[fd], last = --npfds;
    pfds[i] = pfds[last];
    pptrs[i] = pptrs[last];
    slot_of_fd[pfds[i].fd] = i;
}

/* Wait for readiness, at most max_ms and (wake_at != 0) not past wake_at (absolute ns):
   ppoll's timespec where there is one, poll's milliseconds (rounded up: never early) on macOS.
   The ready pointers are copied out first, so a handler may add or remove descriptors. */
static int ev_wait(void **out, int max, uint64_t wake_at, int max_ms) {
    uint64_t wait_ns = (uint64_t)max_ms * 1000000ull, now = now_ns();
    if (wake_at) wait_ns = wake_at <= now + 2000 ? 0 : (wake_at - now < wait_ns ? wake_at - now : wait_ns);
#ifdef __APPLE__
    int n = poll(pfds, (nfds_t)npfds, (int)((wait_ns + 999999) / 1000000));
#else
    struct timespec ts = {.tv_sec = (time_t)(wait_ns / 1000000000ull),
                          .tv_nsec = (long)(wait_ns % 1000000000ull)};
    int n = ppoll(pfds, (nfds_t)npfds, &ts, NULL);
#endif
    if (n <= 0) return n;
    int k = 0;
    for (int i = 0; i < npfds && k < max; i++)
        if (pfds[i].revents) out[k++] = pptrs[i];
    return k;
}
#endif

/* ---- connections --------------------------------------------------------------------------- */

static void die_usage(const char *why) {
    fprintf(stderr, "loadgen: %s\n", why);
    exit(2);
}

static struct conn *conns;
static int nconns, mode;
static size_t size = 64;
static char *message;
static size_t message_len;
static struct sockaddr_storage addr;
static socklen_t addrlen;
static uint64_t errors, eofs, resets, connect_failures;

static void set_events(struct conn *c, unsigned events) {
    if (c->events == events) return;
    c->events = events;
    ev_mod(c->fd, c, events);
}

static void conn_close(struct conn *c) {
    if (c->state == CLOSED) return;
    ev_del(c->fd);
    close(c->fd);
    c->state = CLOSED;
}

static int nonblocking_socket(int family) {
#ifdef SOCK_NONBLOCK
    return socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
#else /* macOS */
    int fd = socket(family, SOCK_STREAM, 0);
    if (fd >= 0) {
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    return fd;
#endif
}

static int open_conn(struct conn *c) {
    c->fd = nonblocking_socket(addr.ss_family);
    if (c->fd < 0) {
        perror("loadgen: socket");
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = CONNECTING;
    if (connect(c->fd, (struct sockaddr *)&addr, addrlen) < 0 && errno != EINPROGRESS) {
        connect_failures++;
        close(c->fd);
        c->state = CLOSED;
        return 0;
    }
    c->events = EV_OUT;
    ev_add(c->fd, c, EV_OUT);
    return 0;
}

/* Try to send the rest of the current message; 1 when all of it is out. */
static int send_message(struct conn *c) {
    while (c->sent < message_len) {
        ssize_t n = send(c->fd, message + c->sent, message_len - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            errors++;
            conn_close(c);
            return -1;
        }
        c->sent += (size_t)n;
        if (mode == MODE_STREAM) {
            c->bytes += (size_t)n;
            if (c->sent == message_len) c->sent = 0; /* stream: the buffer again, forever */
        }
    }
    return 1;
}

/* Go on sending the current request.  While part of it is still unsent the connection reads
   too: a server echoes a 100 KiB message while it is still arriving, and a client that only
   wrote would fill both socket buffers and wait forever. */
static void push_request(struct conn *c) {
    int r = send_message(c);
    if (r == 1) {
        c->state = RECEIVING;
        set_events(c, EV_IN);
    } else if (r == 0) {
        set_events(c, EV_IN | EV_OUT);
    }
}

/* A new request whose clock started at t0 (now, or in the open loop when it fell due). */
static void start_request_at(struct conn *c, uint64_t t0) {
    c->sent = 0;
    c->received = 0;
    c->t0 = t0;
    c->state = SENDING;
    push_request(c);
}

static void start_request(struct conn *c) { start_request_at(c, now_ns()); }

/* ---- the open loop's schedule ------------------------------------------------------------ */

static uint64_t t_start;       /* when the measurement began, ns */
static double interval_ns;     /* 1e9 / RATE: the spacing of the whole schedule */
static uint64_t total_due;     /* requests due within the run: every j with j/RATE < SECONDS */
static uint64_t next_due;      /* the next j the dispatcher has not reached */
static uint64_t sent_total, backlogged, dispatch_lag_max_ns, dispatch_lag_sum_ns, dispatched;

static uint64_t due_time(uint64_t j) { return t_start + (uint64_t)((double)j * interval_ns); }

/* The request j = issued*CONNS + index of connection c (its next one). */
static uint64_t next_of(const struct conn *c) {
    return c->issued * (uint64_t)nconns + (uint64_t)c->index;
}

static void open_send(struct conn *c, uint64_t due) {
    c->issued++;
    sent_total++;
    start_request_at(c, due); /* the latency clock runs from when it was due */
}

/* Send every request that fell due by now to its connection, if that connection is free; a
   busy one sends it when its answer comes (open_answered).  The dispatcher's own lateness is
   the generator's timing error, reported as dispatch_lag_mean_us and dispatch_lag_max_us. */
static void open_dispatch(uint64_t now) {
    while (next_due < total_due) {
        uint64_t due = due_time(next_due);
        if (due > now) break;
        struct conn *c = &conns[next_due % (uint64_t)nconns];
        if (c->state == IDLE && next_of(c) == next_due) {
            if (now - due > dispatch_lag_max_ns) dispatch_lag_max_ns = now - due;
            dispatch_lag_sum_ns += now - due;
            dispatched++;
            open_send(c, due);
        }
        next_due++;
    }
}

/* An answer came: its connection's next request goes at once if it is already due (the
   backlog: its clock has been running), or waits, idle, for the dispatcher. */
static void open_answered(struct conn *c, uint64_t now) {
    uint64_t j = next_of(c);
    if (j < total_due && due_time(j) <= now) {
        backlogged++;
        open_send(c, due_time(j));
    } else {
        c->state = IDLE;
        set_events(c, 0);
    }
}

/* Every request due within the run was answered (or its connection is gone). */
static int open_all_answered(void) {
    if (next_due < total_due) return 0;
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        if (c->state == CLOSED) continue;
        if (c->state != IDLE || next_of(c) < total_due) return 0;
    }
    return 1;
}

/* Stdin as an event source (hold, echo -i): a pipe or a terminal.  epoll refuses what cannot
   block (a regular file, /dev/null) and the poll backend does the same, so both backends take
   such a stdin for "no stdin" rather than for an immediate EOF. */
static int watch_stdin(void) {
#ifndef USE_EPOLL
    struct stat st;
    if (fstat(0, &st) < 0 || !(S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode) || isatty(0)))
        return -1;
#endif
    return ev_add(0, NULL, EV_IN);
}

/* ---- main ---------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    if (argc < 2)
        die_usage("usage: loadgen echo|open|stream|hold -p PORT [-H HOST] [-c N] [-s B] [-d S] "
                  "[-n R] [-r RATE] [-g S] [-t S] [-w S] [-i]");
    if (!strcmp(argv[1], "echo")) mode = MODE_ECHO;
    else if (!strcmp(argv[1], "open")) mode = MODE_OPEN;
    else if (!strcmp(argv[1], "stream")) mode = MODE_STREAM;
    else if (!strcmp(argv[1], "hold")) mode = MODE_HOLD;
    else die_usage("mode must be echo, open, stream or hold");
    const char *host = "127.0.0.1";
    int port = 0;
    double duration = 0, timeout = 60, warmup = 5, rate = 0, grace = 2;
    long per_conn = 0;
    int stop_on_stdin = 0, stdin_ended = 0;
    nconns = 1;
    int opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "H:p:c:s:d:n:r:g:t:w:i")) != -1) {
        switch (opt) {
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': nconns = atoi(optarg); break;
        case 's': size = (size_t)atol(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'n': per_conn = atol(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'g': grace = atof(optarg); break;
        case 't': timeout = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'i': stop_on_stdin = 1; break;
        default: die_usage("bad option");
        }
    }
    if (port <= 0 || port > 65535 || nconns <= 0 || size < 1) die_usage("bad port, -c or -s");
    if (mode != MODE_HOLD && mode != MODE_OPEN && duration <= 0 && per_conn <= 0)
        die_usage("need -d or -n");
    if (mode == MODE_OPEN && (rate <= 0 || duration <= 0 || grace < 0))
        die_usage("open needs -r RATE > 0 and -d SECONDS > 0 (and -g >= 0)");
    int echoing = mode == MODE_ECHO || mode == MODE_OPEN; /* a request, then its echo */

    /* Loopback only: the bench never sends traffic anywhere else. */
    memset(&addr, 0, sizeof addr);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        if ((ntohl(a4->sin_addr.s_addr) >> 24) != 127) die_usage("host must be a loopback address");
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        addrlen = sizeof *a4;
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr)) die_usage("host must be a loopback address");
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        addrlen = sizeof *a6;
    } else {
        die_usage("host must be a numeric loopback address");
    }

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0 && rl.rlim_max > 10240) {
            rl.rlim_cur = 10240; /* macOS: an unlimited hard limit, but OPEN_MAX per process */
            setrlimit(RLIMIT_NOFILE, &rl);
        }
    }
    signal(SIGPIPE, SIG_IGN);
#ifdef __linux__
    /* The open loop wakes at each due time: no 50 us of default timer slack on top. */
    if (mode == MODE_OPEN) prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
#endif

    /* The message: echo/hold send one line of SIZE bytes; stream sends 64 KiB of such lines. */
    size_t line = size;
    message_len = mode == MODE_STREAM ? (65536 / line) * line : line;
    if (message_len < line) message_len = line;
    if (mode == MODE_HOLD) message_len = line = 2;
    message = malloc(message_len);
    for (size_t i = 0; i < message_len; i++)
        message[i] = (i % line == line - 1) ? '\n' : (char)('a' + (i % line) % 26);
    char *scratch = malloc(65536);

    int max_ready = nconns + 8 > 1024 ? nconns + 8 : 1024; /* poll: every ready fd at once */
    if (ev_init(max_ready) < 0) {
        perror("loadgen: event backend");
        return 1;
    }
    conns = calloc((size_t)nconns, sizeof *conns);
    void **ready = malloc(sizeof *ready * (size_t)max_ready);
    uint64_t t_begin = now_ns();
    uint64_t hard_deadline = t_begin + (uint64_t)(timeout * 1e9);
    for (int i = 0; i < nconns; i++) {
        conns[i].index = i;
        if (open_conn(&conns[i]) < 0) break;
    }

    uint64_t deadline = 0, t_last_done = 0;
    double cpu_start = 0;
    int warmed = 0;
    uint64_t warm_deadline = t_begin + (uint64_t)(warmup * 1e9);
    int connected = 0, finished = 0, ready_printed = 0, measuring = 0, echoed = 0;
    int stdin_open = mode == MODE_HOLD || (mode == MODE_ECHO && stop_on_stdin);
    if (mode == MODE_HOLD) t_start = t_begin;
    if (stdin_open && watch_stdin() < 0) stdin_open = 0;

    /* -n (the storm): the clock starts with the first connect. */
    if (mode == MODE_ECHO && per_conn > 0 && duration <= 0) {
        measuring = 1;
        t_start = t_begin;
        cpu_start = 0;
        printf("{\"event\":\"start\"}\n");
        fflush(stdout);
    }
    int pending = nconns - (int)connect_failures; /* connections whose connect has not ended */
    int open_count = pending;
    int timed_out = 0;

    for (;;) {
        uint64_t now = now_ns();
        if (now >= hard_deadline) {
            if (mode == MODE_HOLD && !ready_printed) {
                /* Not everybody was echoed in time (a server that serves one client at a
                   time): report what we have and go on waiting for stdin. */
                printf("{\"event\":\"ready\",\"connections\":%d,\"connected\":%d,"
                       "\"echoed\":%d,\"errors\":%llu,\"elapsed\":%.6f,\"timed_out\":true}\n",
                       nconns, connected, echoed, (unsigned long long)(errors + connect_failures),
                       (double)(now - t_begin) / 1e9);
                fflush(stdout);
                ready_printed = 1;
                hard_deadline = UINT64_MAX;
                continue;
            }
            timed_out = 1;
            break;
        }
        if (!measuring && pending == 0 && mode != MODE_HOLD &&
            (mode == MODE_STREAM || warmed >= open_count || now >= warm_deadline)) {
            /* Every connect ended and (echo, open) every client had one unmeasured round trip,
               so the server has accepted them all: start the clock and the traffic.  A server
               that serves one client at a time never gets there; the warm-up timeout (-w)
               bounds the wait and the result says how many clients were ever served. */
            measuring = 1;
            t_start = now;
            deadline = t_start + (uint64_t)(duration * 1e9);
            if (mode == MODE_OPEN) {
                interval_ns = 1e9 / rate;
                double due = duration * rate;
                total_due = (uint64_t)due;
                if ((double)total_due < due - 1e-6) total_due++; /* j < SECONDS*RATE */
            }
            cpu_start = cpu_seconds();
            printf("{\"event\":\"start\",\"connected\":%d,\"warmed\":%d}\n", connected, warmed);
            fflush(stdout);
            for (int i = 0; i < nconns; i++) {
                struct conn *c = &conns[i];
                if (mode == MODE_STREAM && c->state == SENDING) set_events(c, EV_OUT);
                if (mode == MODE_ECHO && c->state == IDLE) {
                    start_request(c);
                    if (c->state == CLOSED) open_count--;
                }
            }
        }
        if (measuring && deadline == 0)
            deadline = duration > 0 ? t_start + (uint64_t)(duration * 1e9) : hard_deadline;
        if (mode == MODE_ECHO && measuring && duration > 0 && now >= deadline) break;
        if (mode == MODE_OPEN && measuring) {
            open_dispatch(now);
            if (open_count == 0 || open_all_answered()) break; /* all answered, or all gone */
            if (now >= deadline + (uint64_t)(grace * 1e9)) break;
        }
        if (stdin_ended) break;
        if (mode == MODE_ECHO && measuring && per_conn > 0 && open_count == 0) break;
        if (mode == MODE_STREAM && measuring && now >= deadline) {
            /* Time is up: half-close every client and wait for the server to close. */
            for (int i = 0; i < nconns; i++) {
                struct conn *c = &conns[i];
                if (c->state == SENDING) {
                    shutdown(c->fd, SHUT_WR);
                    c->state = DRAINING;
                    set_events(c, EV_IN);
                }
            }
            if (open_count == 0) break;
        }
        if (mode == MODE_HOLD && !ready_printed && pending == 0 &&
            (echoed + (int)errors + (int)eofs + (int)resets + (int)connect_failures >= nconns)) {
            /* Everybody echoed (or failed): report, then wait for the server or stdin. */
            ready_printed = 1;
            printf("{\"event\":\"ready\",\"connections\":%d,\"connected\":%d,\"echoed\":%d,"
                   "\"errors\":%llu,\"elapsed\":%.6f}\n",
                   nconns, connected, echoed, (unsigned long long)(errors + connect_failures),
                   (double)(now - t_begin) / 1e9);
            fflush(stdout);
        }
        if (mode == MODE_HOLD && ready_printed && (open_count == 0 || !stdin_open)) break;

        uint64_t wake_at = mode == MODE_OPEN && measuring && next_due < total_due
                               ? due_time(next_due) : 0;
        int n = ev_wait(ready, max_ready, wake_at, 50);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("loadgen: wait");
            return 1;
        }
        now = now_ns();
        for (int k = 0; k < n; k++) {
            struct conn *c = ready[k];
            if (c == NULL) { /* stdin */
                ssize_t r = read(0, scratch, 65536);
                if (r <= 0) {
                    stdin_open = 0;
                    if (mode == MODE_ECHO) stdin_ended = 1;
                    ev_del(0);
                }
                continue;
            }
            if (c->state == CLOSED) continue;
            if (c->state == CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                pending--;
                if (err) {
                    connect_failures++;
                    open_count--;
                    conn_close(c);
                    continue;
                }
                connected++;
                c->state = SENDING;
                if (mode == MODE_ECHO && measuring) c->warm = 1; /* the storm: no warm-up */
                if (mode == MODE_HOLD || echoing) {
                    start_request(c);
                    if (c->state == CLOSED) open_count--;
                } else {
                    set_events(c, 0); /* quiet until the measurement starts */
                }
                continue;
            }
            if (c->state == SENDING) {
                if (mode == MODE_STREAM) {
                    if (send_message(c) < 0) open_count--;
                    continue;
                }
                push_request(c);
                if (c->state == CLOSED) {
                    open_count--;
                    continue;
                }
                /* and read whatever part of the echo already came */
            }
            /* RECEIVING, DRAINING, IDLE (only an EOF or a reset is expected) or a hold client
               after its echo: read. */
            ssize_t r = recv(c->fd, scratch, 65536, 0);
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
            if (r <= 0) {
                if (r == 0) eofs++;
                else if (errno == ECONNRESET) resets++;
                else errors++;
                if (c->state == DRAINING) t_last_done = now;
                else if (mode == MODE_HOLD) t_last_done = now;
                conn_close(c);
                open_count--;
                continue;
            }
            if (c->state != SENDING && c->state != RECEIVING) continue;
            c->received += (size_t)r;
            if (c->state != RECEIVING || c->received < message_len) continue;
            c->replied = 1;
            if (mode == MODE_HOLD) {
                if (c->requests++ == 0) echoed++;
                c->received = 0;
                continue;
            }
            if (!c->warm) {
                c->warm = 1;
                warmed++;
                if (!measuring) {
                    c->state = IDLE; /* until the clock starts */
                    set_events(c, 0);
                } else if (mode == MODE_OPEN) {
                    open_answered(c, now); /* late to the schedule: it catches up */
                } else {
                    start_request(c);
                    if (c->state == CLOSED) open_count--;
                }
                continue;
            }
            if (mode == MODE_OPEN) {
                record(now - c->t0); /* from when it was due */
                c->requests++;
                t_last_done = now;
                open_answered(c, now);
                continue;
            }
            if (!measuring || (duration > 0 && now >= deadline)) continue;
            record(now - c->t0);
            c->requests++;
            if (per_conn > 0 && (long)c->requests >= per_conn) {
                t_last_done = now;
                conn_close(c);
                open_count--;
                finished++;
            } else {
                start_request(c);
                if (c->state == CLOSED) open_count--;
            }
        }
    }

    uint64_t t_end = now_ns();
    double cpu = cpu_seconds() - cpu_start;
    double elapsed;
    if (mode == MODE_OPEN) {
        /* The schedule's length, or longer when the last answers came after its end. */
        elapsed = duration;
        if (t_last_done && (double)(t_last_done - t_start) / 1e9 > elapsed)
            elapsed = (double)(t_last_done - t_start) / 1e9;
    } else if (mode == MODE_ECHO && duration > 0 && !stdin_ended) elapsed = duration;
    else if (t_last_done && !timed_out) elapsed = (double)(t_last_done - t_start) / 1e9;
    else elapsed = (double)(t_end - t_start) / 1e9;
    if (mode == MODE_HOLD) elapsed = (double)(t_end - t_begin) / 1e9;
    if (stdin_ended && !measuring) elapsed = 0;
    uint64_t requests = 0, bytes = 0;
    int served = 0;
    for (int i = 0; i < nconns; i++) {
        requests += conns[i].requests;
        bytes += conns[i].bytes;
        if (conns[i].requests > 0 || conns[i].bytes > 0 || conns[i].replied) served++;
    }
    int still_open = 0;
    for (int i = 0; i < nconns; i++)
        if (conns[i].state != CLOSED) still_open++;
    const char *modes[] = {"echo", "stream", "hold", "open"};
    printf("{\"event\":\"result\",\"mode\":\"%s\",\"backend\":\"%s\",\"connections\":%d,"
           "\"connected\":%d,\"served_connections\":%d,\"requests\":%llu,\"bytes\":%llu,"
           "\"elapsed\":%.6f,\"wall\":%.6f,\"cpu\":%.6f,\"timed_out\":%s,\"errors\":%llu,"
           "\"connect_failures\":%llu,\"eofs\":%llu,\"resets\":%llu,\"still_open\":%d,"
           "\"warmed\":%d,",
           modes[mode], backend_name, nconns, connected, served, (unsigned long long)requests,
           (unsigned long long)bytes, elapsed, (double)(t_end - t_start) / 1e9,
           cpu, timed_out ? "true" : "false", (unsigned long long)errors,
           (unsigned long long)connect_failures, (unsigned long long)eofs,
           (unsigned long long)resets, still_open, warmed);
    if (mode == MODE_OPEN)
        printf("\"target_rate\":%.3f,\"achieved_rate\":%.3f,\"due\":%llu,\"sent\":%llu,"
               "\"backlogged\":%llu,\"unfinished\":%llu,\"dispatch_lag_mean_us\":%.1f,"
               "\"dispatch_lag_max_us\":%.1f,\"grace\":%.3f,",
               rate, elapsed > 0 ? (double)requests / elapsed : 0.0,
               (unsigned long long)total_due, (unsigned long long)sent_total,
               (unsigned long long)backlogged, (unsigned long long)(total_due - requests),
               dispatched ? (double)dispatch_lag_sum_ns / (double)dispatched / 1e3 : 0.0,
               (double)dispatch_lag_max_ns / 1e3, grace);
    print_hist();
    printf("}\n");
    fflush(stdout);
    for (int i = 0; i < nconns; i++) conn_close(&conns[i]);
    return 0;
}
