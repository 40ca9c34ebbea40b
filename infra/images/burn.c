/* faas-cpu: burns one CPU for DURATION_S seconds (wall clock), then exits 0. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(void) {
    const char *env = getenv("DURATION_S");
    double duration = env ? atof(env) : 5.0;
    volatile unsigned long spins = 0;
    double end = now() + duration;
    printf("faas-cpu: burning one CPU for %.3f s\n", duration);
    fflush(stdout);
    while (now() < end) {
        for (int i = 0; i < 100000; i++) spins++;
    }
    printf("faas-cpu: done\n");
    return 0;
}
