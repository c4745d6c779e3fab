"""The studio's pages, a module a page: generate, gallery, collections, sharing and the public link pages."""
