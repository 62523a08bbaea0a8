// A deterministic syscall workload for sonde's syscall tests.
//
// Usage: syscall_mix GETPPID WRITES OPENS SLEEPS SLEEP_MS
// Waits for one line on stdin (so the tracer is attached and the pid known),
// then makes exactly GETPPID getppid(2), WRITES write(2) of 1 byte to
// /dev/null, OPENS openat(2) of a missing file (ENOENT) and SLEEPS
// nanosleep(2) of SLEEP_MS ms, all as raw syscalls (no libc caching), then
// prints "done" and waits for another line before exiting.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

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
    for (long i = 0; i < n_sleep; i++) syscall(SYS_nanosleep, &ts, NULL);
    printf("done\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 0;
    return 0;
}
