// Package hugepagetest is a fake hugepage mapper for tests: [Fake] hands
// out pages with per-size accounting and answers the simulated driver's
// questions about the mappings (nedevtest.MemoryInfo).
package hugepagetest
