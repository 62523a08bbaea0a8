// Microbenchmark: ns per getppid(2). Usage: getppid_loop [N] (default 2e6).
// Prints "getppid ns/call: X" where X is this thread's CPU time per call
// (user + system, which includes the eBPF programs run by the syscall
// hooks), then "wall ns/call: Y". CPU time is the figure to compare: on a
// shared machine wall time also counts the time other tasks held the CPU.
// Each call is a raw syscall (glibc does not cache getppid; syscall(2) makes
// that explicit).
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double ns_between(struct timespec a, struct timespec b) {
    return (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 2000000;
    if (n <= 0) {
        fprintf(stderr, "usage: %s [N>0]\n", argv[0]);
        return 2;
    }
    struct timespec c0, c1, w0, w1;
    for (long i = 0; i < 10000; i++) syscall(SYS_getppid); // warm up
    clock_gettime(CLOCK_MONOTONIC, &w0);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
    for (long i = 0; i < n; i++) syscall(SYS_getppid);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
    clock_gettime(CLOCK_MONOTONIC, &w1);
    printf("getppid ns/call: %.1f\n", ns_between(c0, c1) / n);
    printf("wall ns/call: %.1f\n", ns_between(w0, w1) / n);
    return 0;
}
