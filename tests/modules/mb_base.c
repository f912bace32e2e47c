// SPDX-License-Identifier: GPL-2.0
/*
 * mb_base - test module exporting mb_base_value(), used by mb_user, so
 * modules.dep records "mb_user.ko: mb_base.ko".  Init sleeps a little so
 * concurrent requests overlap.  Alias "mbtest:base".
 */
#include <linux/module.h>
#include <linux/delay.h>

static uint delay_ms = 200;
module_param(delay_ms, uint, 0444);
MODULE_PARM_DESC(delay_ms, "milliseconds to sleep in init (default 200)");

int mb_base_value(void)
{
	return 42;
}
EXPORT_SYMBOL_GPL(mb_base_value);

static int __init mb_base_init(void)
{
	pr_info("mb_base: init\n");
	msleep(delay_ms);
	return 0;
}

static void __exit mb_base_exit(void)
{
	pr_info("mb_base: exit\n");
}

module_init(mb_base_init);
module_exit(mb_base_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("modbroker test: exports a symbol");
MODULE_ALIAS("mbtest:base");
