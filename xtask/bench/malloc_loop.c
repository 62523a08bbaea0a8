// Benchmark workload: N malloc(64)+free pairs; prints the CPU ns per pair
// (thread CPU time includes uprobe handling, not other tasks' time).
// With a second argument `wait`, prints `ready` and runs the loop once per
// line read on stdin (so a tracer can attach to the pid first, and measure
// a second pass differently), exiting at end of input.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void run(long n) {
    struct timespec a, b;
    void *volatile sink;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    for (long i = 0; i < n; i++) { sink = malloc(64); free(sink); }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    (void)sink;
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("malloc+free ns/pair: %.2f\n", ns / n);
    fflush(stdout);
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 2000000;
    if (argc > 2 && strcmp(argv[2], "wait") == 0) {
        char line[16];
        printf("ready\n");
        fflush(stdout);
        while (fgets(line, sizeof line, stdin)) run(n);
        return 0;
    }
    run(n);
    return 0;
}
