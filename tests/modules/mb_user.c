// SPDX-License-Identifier: GPL-2.0
/*
 * mb_user - test module that calls mb_base_value() from mb_base, so it
 * depends on mb_base in modules.dep.  Init sleeps a little so concurrent
 * requests overlap.  Alias "mbtest:user".
 */
#include <linux/module.h>
#include <linux/delay.h>

int mb_base_value(void);

static uint delay_ms = 200;
module_param(delay_ms, uint, 0444);
MODULE_PARM_DESC(delay_ms, "milliseconds to sleep in init (default 200)");

static int __init mb_user_init(void)
{
	pr_info("mb_user: init base=%d\n", mb_base_value());
	msleep(delay_ms);
	return 0;
}

static void __exit mb_user_exit(void)
{
	pr_info("mb_user: exit\n");
}

module_init(mb_user_init);
module_exit(mb_user_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("modbroker test: depends on mb_base");
MODULE_ALIAS("mbtest:user");
