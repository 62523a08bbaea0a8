// Microbenchmark: CPU ns per HTTP/1.1 exchange on loopback, client and
// server in one thread (so the figure is CPU time, not scheduling luck).
// Usage: http_pingpong [N [M]] (default 200000 exchanges, M = 10: the other
// two loops run N*M times; M = 0 skips them). One keep-alive connection made
// with connect/accept (so the HTTP collector tracks it from the start); each
// exchange is: client write(request), server read, server writev(status
// line + headers, body), client read. Also times write(2) of 1 byte to
// /dev/null (a hooked syscall on a non-socket fd) and getppid (not hooked).
// Prints "exchange ns: X", "devnull write ns: Y", "getppid ns: Z": this
// thread's CPU time per operation, which includes the eBPF programs the
// syscalls run.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static double cpu_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000;
    if (n <= 0) {
        fprintf(stderr, "usage: %s [N>0]\n", argv[0]);
        return 2;
    }
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (l < 0 || bind(l, (void *)&a, sizeof a) || listen(l, 1) || getsockname(l, (void *)&a, &al))
        die("listen");
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0 || connect(c, (void *)&a, sizeof a)) die("connect");
    int s = accept(l, NULL, NULL);
    if (s < 0) die("accept");
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    static const char req[] = "GET /1k.html HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: pingpong\r\n\r\n";
    static const char hdr[] = "HTTP/1.1 200 OK\r\nServer: pingpong\r\nContent-Type: text/html\r\n"
                              "Content-Length: 1024\r\nConnection: keep-alive\r\n\r\n";
    static char body[1024], buf[4096];
    memset(body, 'x', sizeof body);
    size_t resp_len = sizeof hdr - 1 + sizeof body;
    double t0 = 0;
    for (long i = -1000; i < n; i++) { // 1000 warm-up exchanges
        if (i == 0) t0 = cpu_ns();
        if (write(c, req, sizeof req - 1) != sizeof req - 1) die("write");
        if (read(s, buf, sizeof buf) != sizeof req - 1) die("server read");
        struct iovec iov[2] = {{(void *)hdr, sizeof hdr - 1}, {body, sizeof body}};
        if (writev(s, iov, 2) != (ssize_t)resp_len) die("writev");
        size_t got = 0;
        while (got < resp_len) {
            ssize_t r = read(c, buf, sizeof buf);
            if (r <= 0) die("client read");
            got += r;
        }
    }
    double ex = (cpu_ns() - t0) / n;
    int dn = open("/dev/null", O_WRONLY);
    if (dn < 0) die("/dev/null");
    long m = n * (argc > 2 ? atol(argv[2]) : 10);
    if (m <= 0) m = 1;
    t0 = cpu_ns();
    for (long i = 0; i < m; i++)
        if (write(dn, "x", 1) != 1) die("devnull");
    double wr = (cpu_ns() - t0) / m;
    t0 = cpu_ns();
    for (long i = 0; i < m; i++) syscall(SYS_getppid);
    double gp = (cpu_ns() - t0) / m;
    printf("exchange ns: %.1f\ndevnull write ns: %.1f\ngetppid ns: %.1f\n", ex, wr, gp);
    close(c);
    close(s);
    close(l);
    return 0;
}
