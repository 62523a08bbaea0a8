// A deterministic syscall workload for sonde's syscall tests.
//
// Usage: syscall_mix GETPPID WRITES OPENS SLEEPS SLEEP_MS
// Waits for one line on stdin (so the tracer is attached and the pid known),
// then makes exactly GETPPID getppid(2), WRITES write(2) of 1 byte to
// /dev/null, OPENS openat(2) of a missing file (ENOENT) and SLEEPS
// nanosleep(2) of SLEEP_MS ms, all as raw syscalls (no libc caching), then
// prints "done MEDIAN_NS" (the median time its sleeps took, measured around
// each call with the vDSO's clock_gettime, which makes no syscall here) and
// waits for another line before exiting.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s GETPPID WRITES OPENS SLEEPS SLEEP_MS\n", argv[0]);
        return 2;
    }
    long n_getppid = atol(argv[1]), n_write = atol(argv[2]), n_open = atol(argv[3]);
    long n_sleep = atol(argv[4]), sleep_ms = atol(argv[5]);
    int fd = open("/dev/null", O_WRONLY);
    if (fd < 0) {
        perror("open /dev/null");
        return 1;
    }
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 1;
    for (long i = 0; i < n_getppid; i++) syscall(SYS_getppid);
    for (long i = 0; i < n_write; i++) syscall(SYS_write, fd, "x", 1);
    for (long i = 0; i < n_open; i++)
        syscall(SYS_openat, AT_FDCWD, "/nonexistent/sonde-test-missing", O_RDONLY);
    struct timespec ts = {sleep_ms / 1000, (sleep_ms % 1000) * 1000000L};
    long long *took = calloc(n_sleep > 0 ? n_sleep : 1, sizeof *took);
    if (!took) return 1;
    for (long i = 0; i < n_sleep; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        syscall(SYS_nanosleep, &ts, NULL);
        clock_gettime(CLOCK_MONOTONIC, &b);
        took[i] = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
    }
    qsort(took, n_sleep, sizeof *took, cmp_ll);
    printf("done %lld\n", n_sleep > 0 ? took[(n_sleep - 1) / 2] : 0LL);
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 0;
    return 0;
}
