/* faas-crash: prints a message and exits with EXIT_CODE (default 3). */
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    const char *env = getenv("EXIT_CODE");
    int code = env ? atoi(env) : 3;
    fprintf(stderr, "faas-crash: exiting with code %d\n", code);
    return code;
}
