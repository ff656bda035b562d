// cxx.cpp - C++ call shapes, ending blocked inside a std::sort comparator on a
// std::thread, while main waits in std::thread::join():
//
//   worker thread:
//     clone3 -> start_thread
//     -> execute_native_thread_routine   libstdc++.so
//     -> std::thread::_State_impl<...>::_M_run
//     -> SortJob::run()                  virtual call through a base pointer
//     -> SortJob::sort_all<int>()        template instantiation
//     -> std::__introsort_loop<...>      libstdc++ algorithm frames, comparator inlined
//     -> std::function<void(int)>        _Function_handler<...>::_M_invoke thunk
//     -> hook lambda -> std::call_once   pthread_once (libc) -> static lambda thunk
//     -> block_forever() -> pthread_cond_wait (futex)
//
//   main thread:
//     _start -> ... -> main -> std::thread::join (libstdc++.so) -> pthread_join
//
// The interesting parts for an unwinder are the C++ names, the template, lambda
// and std::function thunk frames, and trips through libc and libstdc++.so in
// the middle of the stack (their own .eh_frame, no frame pointers).
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unistd.h>
#include <vector>

#define KEEP __attribute__((noinline, noclone))

static std::mutex mu;
static std::condition_variable cv;          // never notified
static bool stop;                           // never set; keeps block_forever returning
static std::atomic<bool> main_joining;      // main is about to block in join()

KEEP int block_forever(int seen)
{
    while (!main_joining.load())
        std::this_thread::yield();
    usleep(100 * 1000);                     // let main actually enter pthread_join

    std::unique_lock<std::mutex> lock(mu);
    std::printf("ready %d\n", static_cast<int>(getpid()));
    std::fflush(stdout);
    while (!stop)
        cv.wait(lock);
    return seen;
}

class Job {
  public:
    virtual ~Job() = default;
    virtual int run() = 0;
};

class SortJob : public Job {
  public:
    explicit SortJob(std::function<void(int)> hook) : hook_(std::move(hook)) {}

    KEEP int run() override
    {
        int r = sort_all<int>(40);
        asm volatile("" : : "r"(r) : "memory");  // no tail call: keep this frame
        return r + 1;
    }

  private:
    // 40 elements: enough for std::sort to go through __introsort_loop.
    template <typename T>
    KEEP T sort_all(int n)
    {
        std::vector<T> v;
        for (int i = 0; i < n; i++)
            v.push_back(static_cast<T>((i * 37) % n));
        bool fired = false;
        std::sort(v.begin(), v.end(), [&](const T &x, const T &y) {
            if (!fired) {                   // the first comparison blocks for good
                fired = true;
                hook_(static_cast<int>(x));
            }
            return x < y;
        });
        return v.front() + v.back();
    }

    std::function<void(int)> hook_;
};

static std::once_flag once;

int main()
{
    int result = 0;
    std::function<void(int)> hook = [&result](int x) {
        std::call_once(once, [&] { result = block_forever(x); });
    };
    std::unique_ptr<Job> job = std::make_unique<SortJob>(hook);
    Job *base = job.get();
    asm volatile("" : "+r"(base));          // hide the dynamic type: no devirtualisation

    int r = 0;
    std::thread worker([&] { r = base->run(); });   // a real virtual call
    main_joining.store(true);
    worker.join();
    return (r + result) & 1;
}
