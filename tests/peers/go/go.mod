module infertap.test/peers

go 1.19
