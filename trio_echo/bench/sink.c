/* sink.c: the bench's C reference for raw streaming (``bench --models c-sink``).
 *
 * The least a print server can do: listen on 127.0.0.1, accept one client at a time, copy what
 * it sends to stdout with read()/write() through one 64 KiB buffer (the classic loop every
 * `nc -l` runs), until EOF; then the next client.  No event loop, no threads, no formatting.
 * With -z it splices instead (socket -> stdout when stdout is a pipe), the kernel's own limit.
 *
 * It speaks the bench's protocol: "NOTICE listening on 127.0.0.1:PORT (c-sink)" on stderr once
 * listening, and on SIGTERM/SIGINT "stopped: served N connections, B bytes received" then exit
 * 0 (the bench's byte accounting reads it).
 *
 * usage: sink [-p PORT] [-z]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF (64 * 1024)

static volatile sig_atomic_t stopping;
static unsigned long long connections, received;

static void on_signal(int sig) { (void)sig; stopping = 1; }

static int write_all(const char *p, ssize_t n) {
    while (n > 0) {
        ssize_t w = write(1, p, (size_t)n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= w;
    }
    return 0;
}

static void serve(int fd, int zero_copy) {
    static char buf[BUF];
    for (;;) {
        ssize_t n;
#ifdef SPLICE_F_MOVE
        if (zero_copy) {
            n = splice(fd, NULL, 1, NULL, BUF, SPLICE_F_MOVE);
            if (n > 0) { received += (unsigned long long)n; continue; }
            if (n < 0 && errno == EINTR && !stopping) continue;
            return;
        }
#endif
        n = read(fd, buf, BUF);
        if (n < 0 && errno == EINTR && !stopping) continue;
        if (n <= 0) return;
        received += (unsigned long long)n;
        if (write_all(buf, n) < 0) { perror("sink: write"); exit(1); }
    }
}

int main(int argc, char **argv) {
    int port = 0, zero_copy = 0, opt;
    while ((opt = getopt(argc, argv, "p:z")) != -1) {
        if (opt == 'p') port = atoi(optarg);
        else if (opt == 'z') zero_copy = 1;
        else { fprintf(stderr, "usage: sink [-p PORT] [-z]\n"); return 2; }
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;  /* no SA_RESTART: a blocked accept()/read() returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ls, 128) < 0 ||
        getsockname(ls, (struct sockaddr *)&addr, &len) < 0) {
        perror("sink: listen");
        return 1;
    }
    fprintf(stderr, "NOTICE listening on 127.0.0.1:%d (c-sink)\n", ntohs(addr.sin_port));
    fflush(stderr);
    while (!stopping) {
        int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            perror("sink: accept");
            return 1;
        }
        connections++;
        serve(fd, zero_copy);
        close(fd);
    }
    fprintf(stderr, "NOTICE stopped: served %llu connections, %llu bytes received\n",
            connections, received);
    return 0;
}
