/*
 * trio_echo bench load generator: one process, one epoll loop, non-blocking sockets.
 *
 * Why C: the benchmark compares servers, so the client must never be the bottleneck.  A
 * single-threaded epoll loop in C drives thousands of loopback connections with a small
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
 * computed (and unit-tested) in Python.  Exit status 0, or 2 on a usage error.
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
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { CONNECTING, SENDING, RECEIVING, DRAINING, CLOSED };
enum { MODE_ECHO, MODE_STREAM, MODE_HOLD };

struct conn {
    int fd;
    int state;
    size_t sent;      /* bytes of the current message sent (echo/hold) */
    size_t received;  /* bytes of the current echo received */
    uint64_t t0;      /* when the current request started, ns */
    uint64_t requests;
    int warm;         /* echo: its unmeasured warm-up request came back */
    int replied;      /* echo: the server answered it at least once */
    uint32_t events;  /* what epoll watches now: skip epoll_ctl when it would not change */
    uint64_t bytes;   /* stream: bytes written */
};

/* Log-linear histogram: values < 1024 exact, above that 9 significant bits. */
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

static void die_usage(const char *why) {
    fprintf(stderr, "loadgen: %s\n", why);
    exit(2);
}

static int epfd;
static struct conn *conns;
static int nconns, mode;
static size_t size = 64;
static char *message;
static size_t message_len;
static struct sockaddr_storage addr;
static socklen_t addrlen;
static uint64_t errors, eofs, resets, connect_failures;

static void set_events(struct conn *c, uint32_t events) {
    if (c->events == events) return;
    c->events = events;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_close(struct conn *c) {
    if (c->state == CLOSED) return;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = CLOSED;
}

static int open_conn(struct conn *c) {
    c->fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
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
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    c->events = EPOLLOUT;
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

/* Try to send the rest of the current message; 1 when all of it is out. */
static int send_message(struct conn *c) {
    while (c->sent < message_len) {
        ssize_t n = send(c->fd, message + c->sent, message_len - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) return 0;
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

static void start_request(struct conn *c) {
    c->sent = 0;
    c->received = 0;
    c->t0 = now_ns();
    c->state = SENDING;
    int r = send_message(c);
    if (r == 1) {
        c->state = RECEIVING;
        set_events(c, EPOLLIN);
    } else if (r == 0) {
        set_events(c, EPOLLOUT);
    }
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
}

int main(int argc, char **argv) {
    if (argc < 2) die_usage("usage: loadgen echo|stream|hold -p PORT [-H HOST] [-c N] [-s B] [-d S] [-n R] [-t S] [-w S] [-i]");
    if (!strcmp(argv[1], "echo")) mode = MODE_ECHO;
    else if (!strcmp(argv[1], "stream")) mode = MODE_STREAM;
    else if (!strcmp(argv[1], "hold")) mode = MODE_HOLD;
    else die_usage("mode must be echo, stream or hold");
    const char *host = "127.0.0.1";
    int port = 0;
    double duration = 0, timeout = 60, warmup = 5;
    long per_conn = 0;
    int stop_on_stdin = 0, stdin_ended = 0;
    nconns = 1;
    int opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "H:p:c:s:d:n:t:w:i")) != -1) {
        switch (opt) {
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': nconns = atoi(optarg); break;
        case 's': size = (size_t)atol(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'n': per_conn = atol(optarg); break;
        case 't': timeout = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'i': stop_on_stdin = 1; break;
        default: die_usage("bad option");
        }
    }
    if (port <= 0 || port > 65535 || nconns <= 0 || size < 1) die_usage("bad port, -c or -s");
    if (mode != MODE_HOLD && duration <= 0 && per_conn <= 0) die_usage("need -d or -n");

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
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);

    /* The message: echo/hold send one line of SIZE bytes; stream sends 64 KiB of such lines. */
    size_t line = size;
    message_len = mode == MODE_STREAM ? (65536 / line) * line : line;
    if (message_len < line) message_len = line;
    if (mode == MODE_HOLD) message_len = line = 2;
    message = malloc(message_len);
    for (size_t i = 0; i < message_len; i++)
        message[i] = (i % line == line - 1) ? '\n' : (char)('a' + (i % line) % 26);
    char *scratch = malloc(65536);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    conns = calloc((size_t)nconns, sizeof *conns);
    struct epoll_event *events = malloc(sizeof *events * 1024);
    uint64_t t_begin = now_ns();
    uint64_t hard_deadline = t_begin + (uint64_t)(timeout * 1e9);
    for (int i = 0; i < nconns; i++)
        if (open_conn(&conns[i]) < 0) break;

    uint64_t t_start = 0, deadline = 0, t_last_done = 0;
    double cpu_start = 0;
    int warmed = 0;
    uint64_t warm_deadline = t_begin + (uint64_t)(warmup * 1e9);
    int connected = 0, finished = 0, ready_printed = 0, measuring = 0, echoed = 0;
    int stdin_open = mode == MODE_HOLD || (mode == MODE_ECHO && stop_on_stdin);
    if (mode == MODE_HOLD) t_start = t_begin;
    if (stdin_open) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev) < 0) stdin_open = 0;
    }

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
            /* Every connect ended and (echo) every client had one unmeasured round trip, so
               the server has accepted them all: start the clock and the traffic.  A server
               that serves one client at a time never gets there; the warm-up timeout (-w)
               bounds the wait and the result says how many clients were ever served. */
            measuring = 1;
            t_start = now;
            deadline = duration > 0 ? t_start + (uint64_t)(duration * 1e9) : hard_deadline;
            cpu_start = cpu_seconds();
            printf("{\"event\":\"start\",\"connected\":%d,\"warmed\":%d}\n", connected, warmed);
            fflush(stdout);
            for (int i = 0; i < nconns; i++) {
                struct conn *c = &conns[i];
                if (c->state != SENDING) continue;
                if (mode == MODE_ECHO) {
                    start_request(c);
                    if (c->state == CLOSED) open_count--;
                }
                else set_events(c, EPOLLOUT);
            }
        }
        if (measuring && deadline == 0)
            deadline = duration > 0 ? t_start + (uint64_t)(duration * 1e9) : hard_deadline;
        if (mode == MODE_ECHO && measuring && duration > 0 && now >= deadline) break;
        if (stdin_ended) break;
        if (mode == MODE_ECHO && measuring && per_conn > 0 && open_count == 0) break;
        if (mode == MODE_STREAM && measuring && now >= deadline) {
            /* Time is up: half-close every client and wait for the server to close. */
            for (int i = 0; i < nconns; i++) {
                struct conn *c = &conns[i];
                if (c->state == SENDING) {
                    shutdown(c->fd, SHUT_WR);
                    c->state = DRAINING;
                    set_events(c, EPOLLIN);
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

        int wait_ms = 50;
        int n = epoll_wait(epfd, events, 1024, wait_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("loadgen: epoll_wait");
            return 1;
        }
        now = now_ns();
        for (int k = 0; k < n; k++) {
            struct conn *c = events[k].data.ptr;
            if (c == NULL) { /* stdin */
                ssize_t r = read(0, scratch, 65536);
                if (r <= 0) {
                    stdin_open = 0;
                    if (mode == MODE_ECHO) stdin_ended = 1;
                    epoll_ctl(epfd, EPOLL_CTL_DEL, 0, NULL);
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
                if (mode == MODE_HOLD || mode == MODE_ECHO) {
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
                int r = send_message(c);
                if (r == 1) {
                    c->state = RECEIVING;
                    set_events(c, EPOLLIN);
                } else if (r < 0) {
                    open_count--;
                }
                continue;
            }
            /* RECEIVING or DRAINING, or a hold client after its echo: read. */
            ssize_t r = recv(c->fd, scratch, 65536, 0);
            if (r < 0 && errno == EAGAIN) continue;
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
            if (c->state == DRAINING) continue;
            c->received += (size_t)r;
            if (c->received >= message_len) {
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
                        c->state = SENDING; /* idle until the clock starts */
                        set_events(c, 0);
                    } else {
                        start_request(c);
                        if (c->state == CLOSED) open_count--;
                    }
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
    }

    uint64_t t_end = now_ns();
    double cpu = cpu_seconds() - cpu_start;
    double elapsed;
    if (mode == MODE_ECHO && duration > 0 && !stdin_ended) elapsed = duration;
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
    const char *modes[] = {"echo", "stream", "hold"};
    printf("{\"event\":\"result\",\"mode\":\"%s\",\"connections\":%d,\"connected\":%d,"
           "\"served_connections\":%d,\"requests\":%llu,\"bytes\":%llu,\"elapsed\":%.6f,"
           "\"wall\":%.6f,\"cpu\":%.6f,\"timed_out\":%s,\"errors\":%llu,\"connect_failures\":%llu,"
           "\"eofs\":%llu,\"resets\":%llu,\"still_open\":%d,\"warmed\":%d,",
           modes[mode], nconns, connected, served, (unsigned long long)requests,
           (unsigned long long)bytes, elapsed, (double)(t_end - t_start) / 1e9, cpu,
           timed_out ? "true" : "false", (unsigned long long)errors,
           (unsigned long long)connect_failures, (unsigned long long)eofs,
           (unsigned long long)resets, still_open, warmed);
    print_hist();
    printf("}\n");
    fflush(stdout);
    for (int i = 0; i < nconns; i++) conn_close(&conns[i]);
    return 0;
}
