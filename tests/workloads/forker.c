// Many short-lived processes: `forker N CALLS [RATE]` fork+execs itself N
// times, one child at a time, at most RATE children per second (0 or absent:
// as fast as it can); each child (`forker child CALLS`) makes CALLS
// getppid(2) and exits. Built static so each child makes few other calls.
// Prints each child's pid, one a line, then "done".
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "child") == 0) {
        long calls = atol(argv[2]);
        for (long i = 0; i < calls; i++) syscall(SYS_getppid);
        _exit(0);
    }
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s N CALLS [RATE]\n", argv[0]);
        return 2;
    }
    long n = atol(argv[1]);
    double rate = argc == 4 ? atof(argv[3]) : 0;
    double start = now();
    // Exec our real path, not /proc/self/exe, so the child's comm is our name.
    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) {
        perror("readlink");
        return 1;
    }
    self[len] = 0;
    for (long i = 0; i < n; i++) {
        if (rate > 0) {
            double due = start + i / rate;
            double wait = due - now();
            if (wait > 0) usleep((useconds_t)(wait * 1e6));
        }
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) {
            execl(self, self, "child", argv[2], (char *)NULL);
            _exit(127);
        }
        printf("%d\n", (int)pid);
        int st;
        if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "child %ld failed\n", i);
            return 1;
        }
    }
    printf("done\n");
    return 0;
}
