// Two processes bounce one byte over pipes N times; prints ns per round trip (wall) and CPU ns per round trip (both processes).
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <time.h>
#include <sys/wait.h>
#include <sys/resource.h>
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000;
    int a[2], b[2]; pipe(a); pipe(b);
    char c = 0;
    struct timespec w0, w1;
    clock_gettime(CLOCK_MONOTONIC, &w0);
    pid_t p = fork();
    if (p == 0) { for (long i = 0; i < n; i++) { read(a[0], &c, 1); write(b[1], &c, 1); } _exit(0); }
    for (long i = 0; i < n; i++) { write(a[1], &c, 1); read(b[0], &c, 1); }
    waitpid(p, 0, 0);
    clock_gettime(CLOCK_MONOTONIC, &w1);
    struct rusage ru, rc; getrusage(RUSAGE_SELF, &ru); getrusage(RUSAGE_CHILDREN, &rc);
    double cpu = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + rc.ru_utime.tv_sec + rc.ru_stime.tv_sec) * 1e9 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec + rc.ru_utime.tv_usec + rc.ru_stime.tv_usec) * 1e3;
    printf("pingpong cpu ns/roundtrip: %.1f\n", cpu / n);
    printf("wall ns/roundtrip: %.1f\n", ((w1.tv_sec - w0.tv_sec) * 1e9 + (w1.tv_nsec - w0.tv_nsec)) / n);
    return 0;
}
