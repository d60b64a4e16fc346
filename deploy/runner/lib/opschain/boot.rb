# frozen_string_literal: true

require_relative 'compiled_code'

module OpsChain
  # How the runner's Ruby commands start. Their first line runs Ruby without RubyGems (`--disable-gems`): loading
  # RubyGems and activating the library's gems through it (opschain-core, rake, hashie) took about 65 ms of
  # every step's start, a fifth of a trivial action's whole time. The image records where RubyGems finds those
  # gems (runner-image.sh writes `gem-paths` beside lib/ with `record`), and `start` puts those directories on the
  # load path while the record still holds: the same HOME, no GEM_HOME, GEM_PATH, RUBYOPT or RUBYLIB, and the
  # same gem specifications installed. Otherwise it loads RubyGems at once, as Ruby would have.
  #
  # With the record, RubyGems still loads the moment anything needs it: the constant Gem (Bundler, a Gemfile),
  # Kernel#gem, or a require that the load path cannot satisfy (any other installed gem), which is then tried
  # again through RubyGems. What Ruby loads with RubyGems for better error messages (error_highlight,
  # did_you_mean) is loaded either way. Either way the files the image compiled load compiled (CompiledCode).
  module Boot
    RECORD = File.expand_path('../../gem-paths', __dir__)
    # What changes where RubyGems looks for gems, or what Ruby loads before us.
    ENVIRONMENT = %w[GEM_HOME GEM_PATH RUBYOPT RUBYLIB].freeze

    module_function

    def start(record = RECORD)
      CompiledCode.use
      paths = recorded_paths(record)
      if paths
        $LOAD_PATH.unshift(*paths)
        defer_rubygems
      else
        require 'rubygems'
      end
      require 'error_highlight'
      require 'did_you_mean'
    end

    # The recorded gem directories, or nil when the record is missing or no longer holds.
    def recorded_paths(record)
      return nil unless ENVIRONMENT.all? { |name| ENV.fetch(name, '').empty? }

      paths = []
      File.foreach(record, chomp: true) do |line|
        kind, value, listing = line.split("\t", 3)
        case kind
        when 'home' then return nil unless ENV['HOME'] == value
        when 'lib' then paths << value
        when 'specifications' then return nil unless specifications(value) == listing
        else return nil
        end
      end
      paths.empty? ? nil : paths
    rescue SystemCallError
      nil
    end

    # A specifications directory's entries (gems installed there), nil when it does not exist.
    def specifications(dir)
      Dir.children(dir).sort.join(' ')
    rescue SystemCallError
      nil
    end

    # The record of this image, run under RubyGems as the image's user: the load path directories RubyGems adds
    # for the library, and every specifications directory it reads, with what each holds.
    def record(out = $stdout)
      before = $LOAD_PATH.dup
      require 'opschain'
      out.puts "home\t#{ENV.fetch('HOME')}"
      ($LOAD_PATH - before).each { |path| out.puts "lib\t#{path}" }
      Gem::Specification.dirs.each do |dir|
        listing = specifications(dir)
        out.puts(listing ? "specifications\t#{dir}\t#{listing}" : "specifications\t#{dir}")
      end
    end

    def defer_rubygems
      Object.autoload(:Gem, 'rubygems')
      Kernel.module_eval do
        alias_method :opschain_require_without_rubygems, :require
        private :opschain_require_without_rubygems

        # A feature the load path lacks may be a gem's: RubyGems is loaded (its require replaces this one) and
        # asked. Once it is loaded, this is the require it falls back on, and a miss is its to handle. Bundler
        # and RubyGems' own files are found without RubyGems but expect it loaded first, as Ruby always has it.
        def require(path)
          OpsChain::Boot.load_rubygems if OpsChain::Boot.needs_rubygems?(path)
          opschain_require_without_rubygems(path)
        rescue LoadError
          raise unless OpsChain::Boot.load_rubygems

          require(path)
        end
        private :require

        # RubyGems' own Kernel#gem replaces this one as it loads.
        def gem(*args)
          OpsChain::Boot.load_rubygems
          gem(*args)
        end
        private :gem
      end
    end

    def needs_rubygems?(path)
      path = path.to_s
      path.start_with?('rubygems/') || path == 'bundler' || path.start_with?('bundler/')
    end

    # Loads RubyGems; false when it is loaded (or loading) already.
    def load_rubygems
      return false if @rubygems

      @rubygems = true
      ::Gem
      true
    end
  end
end
