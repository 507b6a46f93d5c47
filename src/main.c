/* coingestd entry point (being wired up). */
#include <stdio.h>

#include "coingest/version.h"

int main(void)
{
    printf("coingestd %s\n", COINGEST_VERSION);
    return 0;
}
