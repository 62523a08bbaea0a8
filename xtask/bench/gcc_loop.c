// Benchmark workload for the memory collector on real work: compiles SRC
// with `gcc -O2 -g -c` N times, one after the other, and prints the CPU
// ms per compile of all the children (gcc, cc1, as: user + system time
// from getrusage(RUSAGE_CHILDREN)). A compiler maps, grows its heap and
// page-faults a lot (tens of thousands of faults per compile), like many
// real short-lived processes.
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s N SRC\n", argv[0]);
        return 2;
    }
    long n = atol(argv[1]);
    for (long i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) {
            execlp("gcc", "gcc", "-O2", "-g", "-c", argv[2], "-o", "/dev/null", (char *)NULL);
            _exit(127);
        }
        int st;
        if (p < 0 || waitpid(p, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) return 1;
    }
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    double ms = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
                (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
    printf("gcc -O2 -g -c CPU ms/compile: %.2f\n", ms / n);
    return 0;
}
