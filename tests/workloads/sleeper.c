// A process with a known name that does nothing until killed: the process
// collector must see its exec, and later its exit.
#include <unistd.h>

int main(void) {
    for (;;) pause();
}
