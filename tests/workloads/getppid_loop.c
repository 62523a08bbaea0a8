// Microbenchmark: ns per getppid(2). Usage: getppid_loop [N] (default 2e6).
// Prints one line: "getppid ns/call: X.X". A raw syscall each time (glibc
// does not cache getppid, but syscall(2) makes that explicit).
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 2000000;
    struct timespec a, b;
    for (long i = 0; i < 10000; i++) syscall(SYS_getppid); // warm up
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) syscall(SYS_getppid);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("getppid ns/call: %.1f\n", ns / n);
    return 0;
}
