module kubetune.dev/hack/runc-capfilter

go 1.22
