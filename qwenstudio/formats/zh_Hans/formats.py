# Django's Chinese month-day pads the month ("09月5日"); people write 9月5日.
MONTH_DAY_FORMAT = "n月j日"
